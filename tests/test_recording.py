"""Recording files: write, seek, replay, and replay up to a cut."""

import numpy as np
import pytest

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.recording import Recording, RecordingError, RecordingWriter


def frames(n, layers=4, hidden=100, width=32):
    rng = np.random.default_rng()
    rows = layers * -(-hidden // width)
    return [Frame(pixels=rng.integers(0, 256, (rows, width), dtype=np.uint8), layers=layers,
                  hidden=hidden, step=i, seq=i, token_id=int(rng.integers(0, 1000)), session=7,
                  lo=rng.standard_normal(layers).astype(np.float32),
                  hi=rng.standard_normal(layers).astype(np.float32) + 5, meta={"token": f"t{i}"})
            for i in range(n)]


def append(path, frames_to_write):
    with RecordingWriter(path) as rec:
        for f in frames_to_write:
            rec.write(f)


def same(a, b):
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.lo, b.lo)
    assert (a.step, a.seq, a.token_id, a.meta) == (b.step, b.seq, b.token_id, b.meta)


def test_write_then_replay_and_seek(tmp_path):
    path = tmp_path / "run.nfrec"
    written = frames(20)
    append(path, written[:12])
    append(path, written[12:])  # appending to an existing recording
    recording = Recording(path)
    assert len(recording) == 20 and not recording.truncated
    for a, b in zip(recording, written):
        same(a, b)
    same(recording[13], written[13])
    same(recording[-1], written[-1])


def test_cut_anywhere_replays_up_to_the_cut(tmp_path):
    path = tmp_path / "run.nfrec"
    written = frames(5)
    append(path, written)
    data = path.read_bytes()
    record = (len(data) - 10) // 5  # the file header is 10 bytes, records are the same size
    for cut in [10, 11, 10 + record - 1, 10 + record, 10 + 2 * record + 7, len(data) - 1]:
        cut_path = tmp_path / f"cut{cut}.nfrec"
        cut_path.write_bytes(data[:cut])
        recording = Recording(cut_path)
        whole = (cut - 10) // record
        got = list(recording)
        assert len(got) == whole
        assert recording.truncated == ((cut - 10) % record != 0)
        for a, b in zip(got, written):
            same(a, b)


def test_damaged_record_stops_replay_there(tmp_path):
    path = tmp_path / "run.nfrec"
    append(path, frames(3))
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # flip bits inside the last record's pixels
    path.write_bytes(bytes(data))
    recording = Recording(path)
    assert len(list(recording)) == 2 and recording.truncated
    append(path, frames(2))  # appending drops the damaged record first: the new ones stay readable
    recording = Recording(path)
    assert [f.step for f in recording] == [0, 1, 0, 1] and not recording.truncated


def test_not_a_recording(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a recording")
    with pytest.raises(RecordingError, match="not a neuralflow recording"):
        Recording(path)
    with pytest.raises(RecordingError, match="not a neuralflow recording"):
        RecordingWriter(path)
    with pytest.raises(RecordingError, match="no such recording"):
        Recording(tmp_path / "missing.nfrec")
    with pytest.raises(RecordingError, match="a folder"):
        Recording(tmp_path)


def test_appending_after_a_cut_keeps_everything_readable(tmp_path):
    path = tmp_path / "run.nfrec"
    written = frames(8)
    append(path, written[:3])
    path.write_bytes(path.read_bytes()[:-10])  # a crash in the middle of the third record
    append(path, written[3:])
    recording = Recording(path)
    assert not recording.truncated
    got = list(recording)
    assert [f.seq for f in got] == [0, 1, 3, 4, 5, 6, 7]
    for a, b in zip(got, written[:2] + written[3:]):
        same(a, b)
