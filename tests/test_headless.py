"""Headless recording (neuralflow.viewer.record): PNGs and animations, over a real Publisher,
and the whole viewer side working with torch made unimportable."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.palette import colorize
from neuralflow.viewer.playback import export
from neuralflow.viewer.record import CAPTION, record_headless, save_png, write_animation
from neuralflow.viewer.recording import RecordingWriter
from neuralflow.viewer.stream import Publisher
from neuralflow.viewer.wire import new_session_id

pytestmark = pytest.mark.timeout(60)


def make_frame(k: int, session: int = 1, **meta) -> Frame:
    rows, cols = np.mgrid[0:24, 0:40]
    pixels = ((rows * 7 + cols * 3 + k * 37) % 256).astype(np.uint8)
    return Frame(pixels=pixels, layers=6, hidden=150, step=k, seq=k, session=session, meta=meta)


def frames_of(path) -> list[np.ndarray]:
    with Image.open(path) as image:
        out = []
        for i in range(image.n_frames):
            image.seek(i)
            out.append(np.asarray(image.convert("RGB")))
        return out


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_write_animation_exact_colours(tmp_path, suffix):
    frames = [make_frame(k) for k in range(5)]
    path = write_animation(frames, tmp_path / f"a{suffix}", palette="seed", fps=15)
    got = frames_of(path)
    assert len(got) == 5
    for frame, image in zip(frames, got):
        assert image.shape == (24, 40, 3)
        np.testing.assert_array_equal(image, np.asarray(colorize(frame)))  # no GIF quantization
    with Image.open(path) as image:
        assert image.info.get("loop") == 0
        assert image.info.get("duration") == (70 if suffix == ".gif" else 67)


def test_write_animation_caption_and_zoom(tmp_path):
    frames = [make_frame(k, token=f"tok{k}") for k in range(3)]
    path = write_animation(frames, tmp_path / "c.gif", palette="viridis", zoom=2, text=True)
    got = frames_of(path)
    assert len(got) == 3 and got[0].shape == (48 + CAPTION, 80, 3)
    np.testing.assert_array_equal(got[1][:48], np.asarray(colorize(frames[1], "viridis", zoom=2)))
    caption = got[1][48:]
    colours = {tuple(c) for c in caption.reshape(-1, 3)}
    assert colours == {(68, 1, 84), (255, 255, 255)}  # viridis' darkest and lightest (overflow white) entries
    with pytest.raises(ValueError):
        write_animation(frames, tmp_path / "x.jpg")
    with pytest.raises(ValueError):
        write_animation([], tmp_path / "x.gif")


def test_save_png_plain_and_with_guide(tmp_path):
    frame = make_frame(2)
    plain = save_png(frame, tmp_path / "p.png", palette="magma")
    with Image.open(plain) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(colorize(frame, "magma")))
    guided = save_png(frame, tmp_path / "g.png", guide=True)
    with Image.open(guided) as image:
        assert image.size[1] == 24 and image.size[0] > 40 + 100
        np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[:, :40], np.asarray(colorize(frame)))


def publish_when_joined(endpoint_box, frames, done):
    """Runs in a thread: bind, wait for the recorder to subscribe, publish frames, then linger."""
    with Publisher("tcp://127.0.0.1:*", republish_s=None) as pub:
        endpoint_box.append(pub.endpoint)
        assert pub.wait_for_subscribers(1, timeout=10)
        for frame in frames:
            pub.publish(frame)
        done.wait(10)


def headless_from_a_publisher(frames, out, **kwargs) -> dict:
    """record_headless(out, count=len(frames)) while a thread publishes `frames` to it."""
    box, done = [], threading.Event()
    publisher = threading.Thread(target=publish_when_joined, args=(box, frames, done))
    publisher.start()
    try:
        while not box:
            threading.Event().wait(0.01)
        return record_headless(box[0], out, count=len(frames), duration=20, **kwargs)
    finally:
        done.set()
        publisher.join()


def test_record_headless_over_a_real_publisher(tmp_path, capsys):
    session = new_session_id()
    frames = [make_frame(k, session=session, token=f"t{k}") for k in range(7)]
    result = headless_from_a_publisher(frames, tmp_path / "out", palette="seed")
    assert result["frames"] == 7 and result["stats"]["gaps"] == 0
    pngs = sorted((tmp_path / "out").glob("frame_*.png"))
    assert pngs == result["pngs"] and len(pngs) == 7
    for frame, png in zip(frames, pngs):  # zoomed as export zooms: 7 x 40 = 280, at least 256 wide
        with Image.open(png) as image:
            assert image.size == (280, 168)
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(colorize(frame, zoom=7)))
    assert result["gif"] == tmp_path / "out" / "animation.gif"
    got = frames_of(result["gif"])
    assert len(got) == 7 and got[0].shape == (168 + CAPTION, 280, 3)
    for frame, image in zip(frames, got):
        np.testing.assert_array_equal(image[:168], np.asarray(colorize(frame, zoom=7)))
    assert str(tmp_path / "out") in capsys.readouterr().err


def test_record_headless_duration_without_publisher(tmp_path, capsys):
    result = record_headless("tcp://127.0.0.1:1", tmp_path / "none", duration=0.2)
    assert result["frames"] == 0 and result["gif"] is None and result["pngs"] == []
    assert "no frames arrived on tcp://127.0.0.1:1" in capsys.readouterr().err


def test_record_headless_shows_progress(tmp_path, capsys):
    frames = [make_frame(k, session=new_session_id()) for k in range(3)]
    headless_from_a_publisher(frames, tmp_path / "out", every_s=0)  # a line every loop
    err = capsys.readouterr().err
    assert "neuralflow: 3 PNGs, 0 dropped upstream, live" in err and "neuralflow: wrote 3 PNGs" in err


def test_record_headless_says_it_joined_late(tmp_path, capsys):
    session = new_session_id()
    frames = [make_frame(k, session=session).replace(seq=k + 40) for k in range(3)]
    headless_from_a_publisher(frames, tmp_path / "out")
    assert "joined at frame 40 of its stream" in capsys.readouterr().err


def test_a_shorter_run_into_the_same_folder_leaves_only_its_own_frames(tmp_path, capsys):
    out, session = tmp_path / "out", new_session_id()
    out.mkdir()
    save_png(make_frame(0), out / "frame_12.png")  # not this run's naming: kept
    (out / "frame_000009.txt").write_text("mine")
    headless_from_a_publisher([make_frame(k, session=session) for k in range(5)], out)
    capsys.readouterr()
    headless_from_a_publisher([make_frame(k, session=session + 1) for k in range(2)], out)
    assert sorted(p.name for p in out.iterdir()) == ["animation.gif", "frame_000000.png", "frame_000001.png",
                                                     "frame_000009.txt", "frame_12.png"]
    assert "deleted 3 frame PNGs an earlier, longer recording left there" in capsys.readouterr().err
    record_headless("tcp://127.0.0.1:1", out, duration=0.2)  # nothing arrives: nothing goes
    assert len(list(out.glob("frame_0*.png"))) == 2

    path = tmp_path / "run.nfrec"  # export: the same, after an export of a longer recording
    with RecordingWriter(path) as writer:
        for k in range(4):
            writer.write(make_frame(k, session=session))
    export(path, png_dir=out)
    with RecordingWriter(tmp_path / "short.nfrec") as writer:
        writer.write(make_frame(0, session=session))
    capsys.readouterr()
    assert len(export(tmp_path / "short.nfrec", png_dir=out)["pngs"]) == 1
    assert sorted(p.name for p in out.glob("frame_*")) == ["frame_000000.png", "frame_000009.txt", "frame_12.png"]
    assert "wrote 1 PNGs in" in (err := capsys.readouterr().err) and "deleted 3 frame PNGs" in err


def test_rejected_messages_are_reported_not_taken_for_silence(tmp_path, capsys):
    """A publisher of another wire version: every message is rejected. The summary says so and
    why, instead of asking whether anything publishes there."""
    import zmq

    from test_wire import forged

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind("tcp://127.0.0.1:*")
    endpoint, done = socket.getsockopt_string(zmq.LAST_ENDPOINT), threading.Event()

    def send():
        while not done.wait(0.01):
            socket.send_multipart(forged(version=99))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        result = record_headless(endpoint, tmp_path / "out", duration=1.0)
    finally:
        done.set()
        sender.join()
        socket.close()
        context.term()
    err = capsys.readouterr().err
    assert result["frames"] == 0 and result["stats"]["rejected"] > 0
    assert "nothing written (rejected" in err and "unsupported wire version 99" in err


def test_a_long_export_says_so_when_it_starts(tmp_path, capsys):
    from neuralflow.viewer.playback import LONG_EXPORT

    path = tmp_path / "long.nfrec"
    with RecordingWriter(path) as writer:
        for k in range(LONG_EXPORT):
            writer.write(make_frame(k))
    export(path, png_dir=tmp_path / "pngs", count=LONG_EXPORT - 1)
    first, *_ = capsys.readouterr().err.splitlines()
    assert "exporting" not in first  # a short one prints its summary only
    export(path, png_dir=tmp_path / "pngs")
    first, *rest = capsys.readouterr().err.splitlines()
    assert first == f"neuralflow: exporting {LONG_EXPORT} frames from {path} ..."
    assert f"{LONG_EXPORT} frames from" in rest[-1]


def test_viewer_runs_with_torch_unimportable(tmp_path):
    script = textwrap.dedent(f"""
        import sys, threading
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import neuralflow.viewer.palette, neuralflow.viewer.guide, neuralflow.viewer.record
        import neuralflow.viewer.window, neuralflow.viewer.stream, neuralflow.viewer.wire
        from neuralflow.viewer.frame import Frame
        from neuralflow.viewer.stream import Publisher
        from neuralflow.viewer.record import record_headless
        frame = Frame(pixels=np.arange(64, dtype=np.uint8).reshape(8, 8), layers=4, hidden=16)
        with Publisher("tcp://127.0.0.1:*", republish_s=None) as pub:
            def send():
                pub.wait_for_subscribers(1, timeout=10)
                for k in range(3):
                    pub.publish(frame.replace(seq=k, step=k))
            threading.Thread(target=send).start()
            result = record_headless(pub.endpoint, {str(tmp_path)!r}, count=3, duration=20, quiet=True)
        assert result["frames"] == 3, result
        assert sys.modules["torch"] is None
        print("ok", len(result["pngs"]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok 3"


@pytest.mark.parametrize("suffix,fps,delay_ms", [(".gif", 0.001, 655_350), (".gif", 1000, 20),
                                                 (".png", 0.00001, 65_535), (".png", 5000, 1)])
def test_animation_delays_stay_within_what_the_format_holds(tmp_path, suffix, fps, delay_ms):
    frames = [Frame(pixels=np.full((4, 8), k * 60, np.uint8), layers=4, hidden=8, step=k) for k in range(2)]
    path = write_animation(frames, tmp_path / f"a{suffix}", fps=fps)
    with Image.open(path) as image:
        image.seek(1)
        assert image.info["duration"] == delay_ms


def test_ctrl_c_anywhere_in_record_ends_it_with_the_summary(tmp_path, monkeypatch, capsys):
    """Ctrl-C while a frame is written (not only while waiting for one) stops recording as
    cleanly: the summary line, and the frames written so far."""
    from neuralflow.viewer import playback, stream
    from neuralflow.viewer.recording import Recording, RecordingWriter

    frame = Frame(pixels=np.zeros((4, 8), np.uint8), layers=4, hidden=8)
    monkeypatch.setattr(stream.Subscriber, "recv", lambda self, timeout=None: frame)
    write = RecordingWriter.write

    def interrupted_third(self, f):
        if self.frames == 2:
            raise KeyboardInterrupt
        write(self, f)

    monkeypatch.setattr(RecordingWriter, "write", interrupted_third)
    result = playback.record_to_file("tcp://127.0.0.1:1", tmp_path / "r.nfrec", count=10)
    assert result["frames"] == 2 and len(Recording(tmp_path / "r.nfrec")) == 2
    assert "wrote 2 frames" in capsys.readouterr().err


def slow_record(tmp_path, monkeypatch, frames, *, write_s, duration, publish_every_s=0.0):
    """record_to_file for `duration` s while a thread publishes `frames`, each write taking
    `write_s` (a disk that is behind)."""
    import time

    from neuralflow.viewer import playback
    from neuralflow.viewer.recording import Recording, RecordingWriter

    write = RecordingWriter.write
    monkeypatch.setattr(RecordingWriter, "write", lambda self, f: (time.sleep(write_s), write(self, f)))
    box, done = [], threading.Event()

    def publish():
        with Publisher("tcp://127.0.0.1:*", republish_s=None) as pub:
            box.append(pub.endpoint)
            assert pub.wait_for_subscribers(1, timeout=10)
            for frame in frames:
                pub.publish(frame)
                time.sleep(publish_every_s)
            done.wait(20)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        while not box:
            threading.Event().wait(0.01)
        result = playback.record_to_file(box[0], tmp_path / "r.nfrec", duration=duration)
    finally:
        done.set()
        publisher.join()
    return result, Recording(tmp_path / "r.nfrec")


def test_record_writes_the_frames_received_before_the_stop(tmp_path, monkeypatch, capsys):
    """A disk behind when --duration ends: the frames already received are written, not lost
    without a word (they were, 60 of 100 here)."""
    session = new_session_id()
    frames = [make_frame(k, session=session) for k in range(100)]
    result, recording = slow_record(tmp_path, monkeypatch, frames, write_s=0.02, duration=0.8,
                                    publish_every_s=0.002)
    assert result["frames"] == len(recording) == 100, result["stats"]
    assert [f.seq for f in recording] == list(range(100))
    assert "wrote 100 frames" in capsys.readouterr().err


def test_the_queue_is_written_past_repeats_and_for_a_bounded_time(tmp_path, monkeypatch):
    """After the stop, a resend of an idle publisher's frame (a repeat) in the queue does not end
    the writing of what is queued behind it (it ended it, and the rest went uncounted); a queue
    that would take longer than DRAIN_S to write is left there."""
    from neuralflow.viewer import playback
    from neuralflow.viewer.stream import Subscriber

    frame = make_frame(0)
    replies = iter([frame, None, frame.replace(seq=1), frame.replace(seq=2)])  # None: a repeat
    monkeypatch.setattr(Subscriber, "recv", lambda self, timeout=None: next(replies, None))
    monkeypatch.setattr(Subscriber, "pending", lambda self: True)
    result = playback.record_to_file("tcp://127.0.0.1:1", tmp_path / "r.nfrec", duration=0, quiet=True)
    assert result["frames"] == 3
    monkeypatch.setattr(Subscriber, "recv", lambda self, timeout=None: frame)  # never empty
    monkeypatch.setattr(playback, "DRAIN_S", 0.3)
    started = time.monotonic()
    playback.record_to_file("tcp://127.0.0.1:1", tmp_path / "s.nfrec", duration=0, quiet=True)
    assert time.monotonic() - started < 2


def test_a_signal_during_a_write_acts_after_it(tmp_path):
    """Ctrl-C (or SIGTERM) in the middle of writing a record used to cut it in two (damage in the
    middle of the file once more frames followed) and leave it out of the count."""
    import signal

    from neuralflow.viewer.playback import _signals_held
    from neuralflow.viewer.recording import Recording, RecordingWriter

    with RecordingWriter(tmp_path / "r.nfrec") as writer:
        with pytest.raises(KeyboardInterrupt):
            with _signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                writer.write(make_frame(0))
                written = writer.frames
        writer.write(make_frame(1))
    assert written == 1 and len(Recording(tmp_path / "r.nfrec")) == 2


def test_a_recorder_behind_holds_bounded_memory_and_shows_the_gaps(tmp_path, monkeypatch, capsys):
    """A publisher faster than the disk: the recorder's queue stops at RECORD_HWM frames (it once
    grew without bound, 25 MB/s here) and ZeroMQ drops the rest, seen as gaps."""
    from neuralflow.viewer import playback

    monkeypatch.setattr(playback, "RECORD_HWM", 20)
    session = new_session_id()
    rng = np.random.default_rng(0)
    frames = [Frame(pixels=rng.integers(0, 256, (256, 512), np.uint8), layers=32, hidden=4096,
                    seq=k, session=session) for k in range(300)]
    result, recording = slow_record(tmp_path, monkeypatch, frames, write_s=0.02, duration=2.0,
                                    publish_every_s=0.002)
    seqs = [f.seq for f in recording]
    assert len(seqs) < 200 and result["stats"]["gaps"] > 0
    assert result["stats"]["gaps"] == seqs[-1] + 1 - len(seqs)  # every frame missed is a gap seen
    assert f"{result['stats']['gaps']} dropped upstream" in capsys.readouterr().err


def test_headless_zooms_each_picture_size_and_animates_the_latest(tmp_path, capsys):
    """A second model's frames (another size) on the same endpoint, interleaved: each PNG zoomed
    for its own size (the first frame's zoom, 7, made 3584 x 1792 PNGs of 256 x 512 frames),
    and the animation holds the last frame's size, not every frame padded to the largest (GBs
    with many frames), nor only the frames since the last change (one, when sizes alternate)."""
    session = new_session_id()
    big = [Frame(pixels=np.full((256, 512), 9 * k, np.uint8), layers=32, hidden=4096, seq=2 * k + 1,
                 session=session) for k in range(3)]
    small = [make_frame(2 * k, session=session) for k in range(3)]
    frames = [f for pair in zip(small, big) for f in pair]
    result = headless_from_a_publisher(frames, tmp_path / "out")
    sizes = []
    for png in result["pngs"]:
        with Image.open(png) as image:
            sizes.append(image.size)
    assert sizes == [(280, 168), (512, 256)] * 3
    got = frames_of(result["gif"])
    assert len(got) == 3 and got[0].shape == (256 + CAPTION, 512, 3)
    assert "the animation holds the last picture size's 3 of the last 6 frames" in capsys.readouterr().err
