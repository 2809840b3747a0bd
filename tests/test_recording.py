"""Recording files: write, seek, replay, and replay up to a cut."""

import numpy as np
import pytest

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.playback import ReplaySource
from neuralflow.viewer.recording import RECORD, RECORD_MAGIC, Recording, RecordingError, RecordingWriter


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


def damage(path, record, delta):
    """Flip one byte of `record`: delta < 0 in its header (-12 is the magic), else its payload."""
    offset = Recording(path).offsets[record][0] + delta
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where, delta", [("payload", 40), ("magic", -12), ("length", -8),
                                          ("checksum", -4)])
def test_damage_costs_only_the_record_it_hit(tmp_path, where, delta):
    """One flipped byte anywhere in record 2 of 6: the other five replay, and appending keeps
    all of them (it used to cut the file at a damaged header, losing every record after it)."""
    path = tmp_path / "run.nfrec"
    written = frames(6) + frames(3)
    append(path, written[:6])
    damage(path, 2, delta)
    size = path.stat().st_size
    recording = Recording(path)
    assert [f.step for f in recording] == [0, 1, 3, 4, 5] and recording.damaged == 1
    assert not recording.truncated
    # read again (a looping replay, a second export): still one damaged record, not two
    assert len(list(recording)) == 5 and recording.damaged == 1
    append(path, written[6:])
    assert path.stat().st_size > size  # nothing already there was cut
    got = list(Recording(path))
    for a, b in zip(got, written[:2] + written[3:]):
        same(a, b)
    assert len(got) == 8


def test_a_whole_record_that_is_no_frame_counts_as_damaged(tmp_path):
    """Its checksum holds but its header is another wire version: skipped, and counted once."""
    import zlib

    from neuralflow.viewer import recording as module

    path = tmp_path / "run.nfrec"
    append(path, frames(2))
    parts = module.wire.encode(frames(1)[0])
    header = bytearray(bytes(parts[0]))
    header[4:6] = (999).to_bytes(2, "little")  # the wire version
    payload = b"".join(module.PART.pack(len(p)) + bytes(p) for p in [bytes(header), *map(bytes, parts[1:])])
    with open(path, "ab") as f:
        f.write(RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload)
    append(path, frames(1))
    recording = Recording(path)
    assert len(list(recording)) == 3 and len(list(recording)) == 3 and recording.damaged == 1


def test_a_looping_replay_counts_a_damaged_record_once(tmp_path):
    path = tmp_path / "run.nfrec"
    append(path, frames(4))
    damage(path, 1, 40)
    recording = Recording(path)
    source = ReplaySource(recording, fps=1000, loop=True)
    steps = [source.recv(timeout=None).step for _ in range(9)]
    assert steps == [0, 2, 3] * 3 and recording.damaged == 1


@pytest.mark.parametrize("to", ["a later record", "the end of the file"])
def test_a_damaged_length_that_lands_on_a_record_loses_only_its_own(tmp_path, to):
    """Records of one recording are often all one size, so a damaged length can point exactly at
    a later header (or the file's end), and the index would take the records between as part of
    it. Reading it fails its checksum and brings them back."""
    path = tmp_path / "run.nfrec"
    written = frames(6)
    append(path, written)
    offsets = Recording(path).offsets
    target = offsets[4][0] - RECORD.size if to == "a later record" else path.stat().st_size
    data = bytearray(path.read_bytes())
    RECORD.pack_into(data, offsets[1][0] - RECORD.size, RECORD_MAGIC, target - offsets[1][0], offsets[1][2])
    path.write_bytes(bytes(data))
    recording = Recording(path)
    got = list(recording)
    assert [f.seq for f in got] == [0, 2, 3, 4, 5] and recording.damaged == 1
    for a, b in zip(got, written[:1] + written[2:]):
        same(a, b)


def test_damaged_last_record_is_skipped_and_kept(tmp_path):
    path = tmp_path / "run.nfrec"
    append(path, frames(3))
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # flip bits inside the last record's pixels
    path.write_bytes(bytes(data))
    recording = Recording(path)
    assert [f.step for f in recording] == [0, 1] and recording.damaged == 1
    with pytest.raises(ValueError, match="record 2 .* damaged"):
        recording[2]
    append(path, frames(2))
    recording = Recording(path)
    assert [f.step for f in recording] == [0, 1, 0, 1] and not recording.truncated


def test_joined_recordings_replay_whole(tmp_path):
    """`cat a.nfrec b.nfrec > c.nfrec`: b's file header sits where a record should be."""
    a, b = frames(3), frames(4)
    append(tmp_path / "a.nfrec", a)
    append(tmp_path / "b.nfrec", b)
    joined = tmp_path / "c.nfrec"
    joined.write_bytes((tmp_path / "a.nfrec").read_bytes() + (tmp_path / "b.nfrec").read_bytes())
    recording = Recording(joined)
    got = list(recording)
    assert len(got) == 7 and recording.damaged == 0 and not recording.truncated
    for x, y in zip(got, a + b):
        same(x, y)


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
    whole = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])  # a crash in the middle of the third record
    with RecordingWriter(path) as writer:
        assert writer.cut_bytes == whole - 10 - Recording(path).end > 0  # the partial record, said
        for frame in written[3:]:
            writer.write(frame)
    recording = Recording(path)
    assert not recording.truncated
    got = list(recording)
    assert [f.seq for f in got] == [0, 1, 3, 4, 5, 6, 7]
    for a, b in zip(got, written[:2] + written[3:]):
        same(a, b)


def test_recording_into_a_pipe(tmp_path):
    """record --out /dev/stdout | ssh ... 'cat > run.nfrec': a pipe cannot tell its position
    (that was an OSError); what comes out of it is a whole recording."""
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    written = frames(3)
    append(fifo, written)
    reader.join(10)
    (tmp_path / "run.nfrec").write_bytes(received[0])
    for a, b in zip(Recording(tmp_path / "run.nfrec"), written, strict=True):
        same(a, b)
