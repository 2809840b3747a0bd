"""The live window (neuralflow.viewer.window) as a user sees it: a real Tk window under Xvfb.

The test starts its own Xvfb (display number picked by Xvfb itself, -displayfd), runs the
window (`neuralflow view`, with torch made unimportable) in a subprocess connected
to a test Publisher, presses keys with xdotool and reads the screen with Pillow's ImageGrab:
every check compares the screen pixel for pixel with colorize()/guide_image() of the frames it
published. Run: `python -m pytest tests/test_window.py`.
Xvfb and xdotool are required (CI installs them): without them these tests FAIL, not skip.
"""

import collections
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from PIL import Image, ImageGrab

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.guide import GAP, guide_image
from neuralflow.viewer.palette import colorize_array, difference, lut
from neuralflow.viewer.record import CAPTION
from neuralflow.viewer.stream import Publisher
from neuralflow.viewer.wire import new_session_id

pytestmark = pytest.mark.timeout(90)
GUIDE_WIDTH = 150


# ---- display --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def display():
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install xvfb xdotool); the window test needs it")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x900x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    with os.fdopen(read, "rb") as pipe:  # Xvfb writes the display number once it accepts clients
        while not number.endswith(b"\n"):
            chunk = pipe.read(1)
            if not chunk:
                xvfb.kill()
                pytest.fail("Xvfb exited before reporting a display")
            number += chunk
    name = f":{int(number)}"
    try:
        yield name
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def screen(display) -> np.ndarray:
    return np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))


def xdotool(display, *args) -> str:
    env = dict(os.environ, DISPLAY=display)
    return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def wait_for(check, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


# ---- frames -----------------------------------------------------------------------------------------

LAYERS, HIDDEN, WIDTH = 16, 512, 128  # 4 bands of 128 dims: a 64 x 128 picture


def make_frame(k: int, session: int, **changes) -> Frame:
    rows, cols = np.mgrid[0:64, 0:WIDTH]
    pixels = ((rows * 7 + cols * 3 + k * 37) % 256).astype(np.uint8)  # every value 0..255, distinct per k
    frame = Frame(pixels=pixels, layers=LAYERS, hidden=HIDDEN, step=k, seq=k, session=session,
                  time_ns=time.time_ns(), meta={"token": f"tok{k}", "model": "test-model"})
    return frame.replace(**changes)


class Window:
    """The window subprocess plus the test's publisher and where the picture is on screen."""

    def __init__(self, display, tmp_path):
        self.display, self.out = display, tmp_path / "saved"
        self.session = new_session_id()
        self.pub = Publisher("tcp://127.0.0.1:*", republish_s=0.3)
        self.context = zmq.Context()
        self.junk = self.context.socket(zmq.PUB)  # a second endpoint that sends garbage
        self.junk.setsockopt(zmq.LINGER, 0)
        junk_port = self.junk.bind_to_random_port("tcp://127.0.0.1")
        self.log = open(tmp_path / "window.log", "w+")
        started = time.monotonic()
        torch_free = ("import sys; sys.modules['torch'] = None; "  # the window must run with torch unimportable
                      "from neuralflow.viewer.cli import main; sys.exit(main(['view'] + sys.argv[1:]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", torch_free, "--connect", self.pub.endpoint,
             "--connect", f"tcp://127.0.0.1:{junk_port}", "--geometry", "1400x700+0+0", "--out", str(self.out)],
            env=dict(os.environ, DISPLAY=display), stdout=self.log, stderr=subprocess.STDOUT)
        env = dict(os.environ, DISPLAY=display)
        self.wid = wait_for(lambda: subprocess.run(  # poll: `xdotool search --sync` only checks twice a second
            ["xdotool", "search", "--onlyvisible", "--name", "neuralflow view"], env=env, capture_output=True,
            text=True).stdout.split(), 10, "the window to appear")[0]
        self.startup_s = time.monotonic() - started
        with open(f"/proc/{self.proc.pid}/stat") as stat:  # utime + stime of the window process so far
            fields = stat.read().rsplit(")", 1)[1].split()
        self.startup_cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        self.origin = self.zoom = None

    def title(self) -> str:
        return xdotool(self.display, "getwindowname", self.wid)

    def key(self, name: str):
        xdotool(self.display, "windowfocus", "--sync", self.wid)
        xdotool(self.display, "key", name)

    def publish(self, frame: Frame):
        assert self.pub.publish(frame.replace(time_ns=time.time_ns()))

    def find(self, expected_small: np.ndarray, palette: str) -> tuple[tuple[int, int], int]:
        """Locate the picture on screen: origin and zoom where it matches exactly."""
        shot = screen(self.display)
        for zoom in range(1, 12):
            expected = colorize_array(expected_small, palette, zoom)
            h, w = expected.shape[:2]
            ys, xs = np.nonzero((shot == expected[0, 0]).all(-1))
            for y, x in zip(ys, xs):
                if y + h <= shot.shape[0] and x + w <= shot.shape[1] and \
                        (shot[y, x:x + w] == expected[0]).all() and (shot[y:y + h, x:x + w] == expected).all():
                    return (int(y), int(x)), zoom
        return None

    def shown(self, pixels: np.ndarray, palette: str = "seed") -> bool:
        (y, x), zoom = self.origin, self.zoom
        expected = colorize_array(pixels, palette, zoom)
        h, w = expected.shape[:2]
        return bool((screen(self.display)[y:y + h, x:x + w] == expected).all())

    def wait_shown(self, pixels, palette="seed", timeout=5.0, what="frame"):
        try:
            wait_for(lambda: self.shown(pixels, palette), timeout, what)
        except AssertionError:
            Image.fromarray(screen(self.display)).save(self.out.parent / "failed.png")
            raise

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.pub.close()
        self.junk.close(linger=0)
        self.context.term()
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


@pytest.fixture
def window(display, tmp_path):
    w = Window(display, tmp_path)
    try:
        yield w
    finally:
        w.close()


# ---- tests ------------------------------------------------------------------------------------------

def test_window_shows_frames_guide_and_reacts_to_keys(window, tmp_path):
    s = window.session
    # "Starts in under a second": wall time depends on how busy the machine is, so the hard check
    # is on the CPU time the window process spent until it was visible; wall time only sanity-checked.
    print(f"window visible {window.startup_s:.2f}s after launch, {window.startup_cpu_s:.2f}s CPU")
    assert window.startup_cpu_s < 1.0, f"window used {window.startup_cpu_s:.2f}s CPU to appear"
    assert window.startup_s < 10.0, f"window took {window.startup_s:.2f}s to appear"
    wait_for(lambda: "- waiting -" in window.title(), 3, "state waiting before any frame")

    # First frame: found on screen, exact seed colours, overflow black, guide beside it.
    a = make_frame(0, s)
    assert window.pub.wait_for_subscribers(1, timeout=5)
    window.publish(a)
    found = wait_for(lambda: window.find(a.pixels, "seed"), 5, "the first frame on screen")
    window.origin, window.zoom = found
    (y0, x0), z = found
    assert z >= 2, "zoom should follow the 1400x700 window"
    shot = screen(window.display)
    for r, c in [(0, 0), (0, 85), (5, 10)]:  # q = 0 (red), q = 255 (overflow), q = 65
        q = a.pixels[r, c]
        assert tuple(shot[y0 + r * z + z // 2, x0 + c * z + z // 2]) == tuple(lut("seed")[q])
    assert a.pixels[0, 85] == 255 and tuple(shot[y0 + z // 2, x0 + 85 * z + z // 2]) == (0, 0, 0)
    guide = np.asarray(guide_image(LAYERS, HIDDEN, WIDTH, "bands", z, GUIDE_WIDTH))
    gx = x0 + WIDTH * z + GAP
    assert (shot[y0:y0 + guide.shape[0], gx:gx + guide.shape[1]] == guide).all(), "layer guide not beside the picture"
    wait_for(lambda: "live" in window.title(), 3, "state live")

    # Palette key cycles seed -> viridis -> magma -> gray -> seed, each exact on screen.
    for palette in ("viridis", "magma", "gray", "seed"):
        window.key("p")
        window.wait_shown(a.pixels, palette, what=f"palette {palette}")
        if palette != "seed":
            q = a.pixels[5, 10]
            assert tuple(screen(window.display)[y0 + 5 * z, x0 + 10 * z]) == tuple(lut(palette)[q])

    # Live frames, then pause: new frames arrive but the picture stays.
    b, c, d = (make_frame(k, s) for k in (1, 2, 3))
    for f in (b, c):
        window.publish(f)
        window.wait_shown(f.pixels, what=f"live frame {f.seq}")
    window.key("space")
    wait_for(lambda: "paused" in window.title(), 3, "paused title")
    window.publish(d)
    time.sleep(0.4)
    assert window.shown(c.pixels), "a paused window must keep its picture"
    window.key("space")
    window.wait_shown(d.pixels, what="newest frame after resume")

    # Scrub back and forth through history, step one frame, step waits for the next frame.
    window.key("Left")
    window.wait_shown(c.pixels, what="one frame back")
    window.key("Left")
    window.wait_shown(b.pixels, what="two frames back")
    window.key("Right")
    window.wait_shown(c.pixels, what="one forward")
    window.key("period")
    window.wait_shown(d.pixels, what="step to newest")
    window.key("period")  # at the newest: the next arriving frame is shown, then it stays
    e, f = make_frame(4, s), make_frame(5, s)
    window.publish(e)
    window.wait_shown(e.pixels, what="stepped to the next arriving frame")
    window.publish(f)
    time.sleep(0.4)
    assert window.shown(e.pixels), "still paused after the step"
    window.key("space")
    window.wait_shown(f.pixels, what="live again")

    # Reference and difference: pinned frame against itself is all white; then a real difference.
    window.key("f")
    window.key("d")
    window.wait_shown(np.full_like(f.pixels, 128), "diverging", what="difference to itself")
    g = make_frame(6, s)
    window.publish(g)
    window.wait_shown(difference(g, f)[0], "diverging", what="difference to the reference")

    # Save: full-resolution PNGs of what is shown (the difference), plain and with the guide.
    window.key("s")
    saved = wait_for(lambda: len(list(window.out.glob("*_diff*.png"))) == 2 and sorted(window.out.glob("*_diff*.png")),
                     3, "two saved PNGs")
    wait_for(lambda: "saved" in window.output(), 3, "the save to finish")
    with Image.open(next(p for p in saved if not p.stem.endswith("guide"))) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), colorize_array(difference(g, f)[0], "diverging"))
    with Image.open(next(p for p in saved if p.stem.endswith("guide"))) as image:
        assert image.size == (WIDTH + GAP + GUIDE_WIDTH, 64)
    window.key("d")
    window.wait_shown(g.pixels, what="difference off")

    # Record three frames to a GIF.
    window.key("r")
    wait_for(lambda: "recording (gif" in window.output(), 5, "the recording to start")
    recorded = [make_frame(k, s) for k in (7, 8, 9)]
    for frame in recorded:
        window.publish(frame)
        window.wait_shown(frame.pixels, what=f"recorded frame {frame.seq}")
    window.key("r")
    gif = wait_for(lambda: sorted(window.out.glob("*.gif")), 5, "the recording")[0]
    wait_for(lambda: "recording saved" in window.output(), 5, "the recording to finish")
    with Image.open(gif) as image:
        assert image.n_frames == 3 and image.size == (WIDTH, 64 + CAPTION)
        image.seek(1)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[:64], colorize_array(recorded[1].pixels))

    # The zoom follows the window size.
    xdotool(window.display, "windowsize", window.wid, "700", "420")
    origin, zoom = wait_for(lambda: window.find(recorded[-1].pixels, "seed"), 5, "the picture after a resize")
    assert zoom < z, (zoom, z)

    # Trouble: garbage on the second endpoint is counted; a seq gap counts as dropped.
    wait_for(lambda: (window.junk.send_multipart([b"not", b"a frame"]) or "rejected 0" not in window.title()),
             5, "rejected count")
    window.publish(make_frame(12, s))  # 10 and 11 never sent
    wait_for(lambda: "dropped 2" in window.title(), 3, "dropped count")

    # A new session with a new geometry: the window keeps going, rescales, and says so.
    other = Frame(pixels=np.arange(16 * 64, dtype=np.uint8).reshape(16, 64), layers=4, hidden=200,
                  layout="layers", session=s + 1, seq=0, step=0, time_ns=time.time_ns())
    window.publish(other)
    window.origin, window.zoom = wait_for(lambda: window.find(other.pixels, "seed"), 5, "the new geometry")
    assert window.zoom > zoom  # a narrower frame gets a larger zoom in the same window
    log = window.output()
    assert "new session" in log and "new geometry: 16x64 px, 4 layers x 200 dims, layers" in log

    # The publisher goes away: the state turns silent.
    window.pub.close()
    wait_for(lambda: "silent" in window.title(), 5, "state silent")

    # q quits, cleanly.
    window.key("q")
    assert window.proc.wait(10) == 0


def test_hover_text_in_process(display, monkeypatch):
    """Hover text (layer, dim, value and range), driven by event_generate in this process,
    and a source that raises once: the window counts it and keeps polling."""
    monkeypatch.setenv("DISPLAY", display)
    import tkinter as tk

    from neuralflow.viewer.window import ViewerWindow

    class Source:
        state, stats = "live", {"gaps": 0, "rejected": 0}

        def __init__(self, frames):
            self.frames = list(frames)

        def recv(self, timeout=None):
            item = self.frames.pop(0) if self.frames else None
            if isinstance(item, Exception):
                raise item
            return item

    frame = make_frame(0, 1).replace(lo=np.arange(LAYERS, dtype=np.float32), hi=np.arange(LAYERS, dtype=np.float32) + 2.55)
    root = tk.Tk()
    try:
        view = ViewerWindow(root, Source([RuntimeError("socket trouble"), frame]), out_dir=".")
        wait_for(lambda: root.update() or view.shown is not None, 3, "frame shown after a source error")
        assert view.errors == 1
        wait_for(lambda: root.update() or "errors   1" in view.stats_label.cget("text"), 3, "the error count shown")
        root.update()
        z = view.zoom
        view.canvas.event_generate("<Motion>", x=10 * z + 1, y=20 * z + 1)  # row 20, col 10
        root.update()
        text = view.hover_label.cget("text")
        q = int(frame.pixels[20, 10])
        layer, dim = frame.locate(20, 10)
        assert (layer, dim) == (4, 138)
        assert f"layer {layer}  dim {dim}" in text and f"q {q}:" in text
        assert f"[{layer + q * 0.01:.4g}, {layer + (q + 1) * 0.01:.4g})" in text
        view.canvas.event_generate("<Motion>", x=85 * z + 1, y=0 * z + 1)  # overflow
        root.update()
        assert "overflow" in view.hover_label.cget("text")
    finally:
        root.destroy()


def test_keys_before_the_first_frame_keep_the_window_live(display, monkeypatch):
    """Left or right pressed while waiting: the first frame still shows, live."""
    monkeypatch.setenv("DISPLAY", display)
    import tkinter as tk

    from neuralflow.viewer.window import ViewerWindow

    class Source:
        state, stats = "waiting", {"gaps": 0, "rejected": 0}

        def __init__(self):
            self.polls = 0

        def recv(self, timeout=None):
            self.polls += 1
            return make_frame(0, 1) if self.polls > 5 else None

    root = tk.Tk()
    try:
        view = ViewerWindow(root, Source(), out_dir=".")
        view.back()
        view.forward()
        view.step()
        assert view.cursor is None and not view.step_pending
        view._update_stats()
        assert "view     live" in view.stats_label.cget("text")
        wait_for(lambda: root.update() or view.shown is not None, 5, "the first frame shown")
        assert view.cursor is None  # live, not paused on a frame that never was
    finally:
        root.destroy()


def test_a_bad_geometry_is_one_line(display, tmp_path):
    recording = tmp_path / "one.nfrec"
    from neuralflow.viewer.recording import RecordingWriter
    with RecordingWriter(recording) as writer:
        writer.write(make_frame(0, 1))
    result = subprocess.run([sys.executable, "-m", "neuralflow.viewer.cli", "view", "--replay", str(recording),
                             "--geometry", "bogus"], env=dict(os.environ, DISPLAY=display),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--geometry bogus" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_paused_past_the_history_says_so(display, monkeypatch):
    """Paused while more frames arrive than the history keeps: the panel says the shown frame
    is older than the history, not a negative position."""
    monkeypatch.setenv("DISPLAY", display)
    import tkinter as tk

    from neuralflow.viewer.window import ViewerWindow

    class Source:
        state, stats = "live", {"gaps": 0, "rejected": 0}

        def recv(self, timeout=None):
            return None

    root = tk.Tk()
    try:
        view = ViewerWindow(root, Source(), out_dir=".", history=4)
        view._take(make_frame(0, 1))
        view._show(view.latest)
        view.toggle_pause()
        for seq in range(1, 11):
            view._take(make_frame(seq, 1))
        view._update_stats()
        text = view.stats_label.cget("text")
        assert "view     paused, 7 before 4 kept" in text  # frame 0 shown; 7..10 kept
    finally:
        root.destroy()


def test_the_live_window_keeps_every_frame(display, monkeypatch, tmp_path):
    """Frames that arrive between two polls all reach the history (and so scrubbing and the
    r recording); the window shows the newest."""
    monkeypatch.setenv("DISPLAY", display)
    from neuralflow.viewer import cli, stream

    class Burst:  # a Subscriber with 10 frames queued
        def __init__(self, endpoints, latest_only=False):
            self.latest_only, self.queue = latest_only, [make_frame(k, 1) for k in range(10)]
            self.state, self.stats = "live", {"gaps": 0, "rejected": 0}

        def recv(self, timeout=None):
            if self.latest_only:  # drains the queue, hands out the newest only
                frames, self.queue = self.queue, []
                return frames[-1] if frames else None
            return self.queue.pop(0) if self.queue else None

        def close(self):
            pass

    seen = {}

    def open_window(source, args, where):
        import tkinter as tk

        from neuralflow.viewer.window import ViewerWindow
        root = tk.Tk()
        try:
            view = ViewerWindow(root, source, out_dir=tmp_path)
            wait_for(lambda: root.update() or not source.queue and view.shown is not None, 5, "frames taken")
            seen.update(total=view.total, shown=view.shown.seq)
        finally:
            root.destroy()

    monkeypatch.setattr(stream, "Subscriber", Burst)
    monkeypatch.setattr(cli, "_open_window", open_window)
    assert cli.main(["view", "--connect", "tcp://127.0.0.1:5999"]) == 0
    assert seen == {"total": 10, "shown": 9}


# ---- in-process checks on one ViewerWindow ------------------------------------------------------------

class Frames:
    """A frame source that hands out the frames the test queued, one per recv."""
    state, stats = "live", {"gaps": 0, "rejected": 0}

    def __init__(self):
        self.queue = collections.deque()

    def recv(self, timeout=None):
        return self.queue.popleft() if self.queue else None


class Endless:
    """A source that always has a next frame: a fast stream, or a replay (`replaying`) running on."""
    state, stats = "live", {"gaps": 0, "rejected": 0}

    def __init__(self, replaying):
        self.replaying, self.sent = replaying, 0

    def recv(self, timeout=None):
        self.sent += 1
        return make_frame(self.sent - 1, 1)


@pytest.fixture
def root(display, monkeypatch):
    monkeypatch.setenv("DISPLAY", display)
    import tkinter as tk
    root = tk.Tk()
    try:
        yield root
    finally:
        try:
            root.destroy()
        except tk.TclError:  # the window closed itself
            pass


def run_until(root, check, what, timeout=5.0):
    return wait_for(lambda: root.update() or check(), timeout, what)


def test_closing_waits_for_every_recording_being_written(root, tmp_path, monkeypatch, capsys):
    """q with an older recording still being written (a newer one done): the window says so and
    closes once both GIFs are whole."""
    from neuralflow.viewer import window as window_module
    from neuralflow.viewer.window import ViewerWindow

    write, release = window_module.write_animation, threading.Event()

    def slow_first(frames, path, **options):  # the 3-frame recording waits for the test
        if len(frames) == 3:
            assert release.wait(30)
        return write(frames, path, **options)

    monkeypatch.setattr(window_module, "write_animation", slow_first)
    source = Frames()
    view = ViewerWindow(root, source, out_dir=tmp_path)
    for count in (3, 2):
        view.toggle_recording()
        source.queue.extend(make_frame(k, 1) for k in range(count))
        run_until(root, lambda: len(view.recording) == count, "frames recorded")
        view.toggle_recording()
    run_until(root, lambda: any(p.name.endswith("_2f.gif") for p in view.saved), "the newer recording written")
    view.close()
    run_until(root, lambda: "writing 1 recording(s)" in root.title(), "the title saying what it waits for")
    assert "writing 1 recording(s)" in capsys.readouterr().err
    release.set()
    root.mainloop()  # until the window closes itself
    gifs = {p.name[-7:]: p for p in tmp_path.glob("*.gif")}
    assert sorted(gifs) == ["_2f.gif", "_3f.gif"]
    for suffix, count in (("_2f.gif", 2), ("_3f.gif", 3)):
        with Image.open(gifs[suffix]) as image:
            assert image.n_frames == count


def test_closing_again_while_waiting_closes_at_once(root, tmp_path, monkeypatch, capsys):
    """A writer that does not finish (a hung disk) cannot hold the window open: q again closes
    it, naming the recording that is lost."""
    import tkinter as tk

    from neuralflow.viewer import window as window_module
    from neuralflow.viewer.window import ViewerWindow

    release = threading.Event()
    monkeypatch.setattr(window_module, "write_animation", lambda frames, path, **options: release.wait(30))
    source = Frames()
    view = ViewerWindow(root, source, out_dir=tmp_path)
    view.toggle_recording()
    source.queue.append(make_frame(0, 1))
    run_until(root, lambda: len(view.recording) == 1, "a frame recorded")
    view.close()
    run_until(root, lambda: "q again: close now" in root.title(), "the window waiting")
    view.close()
    with pytest.raises(tk.TclError):
        root.winfo_exists()  # destroyed
    assert "closed before 1 recording(s) were written" in capsys.readouterr().err
    release.set()


def test_saves_never_overwrite(root, tmp_path):
    """s twice on one frame, with another palette or another reference: four files, each as saved."""
    from neuralflow.viewer.window import ViewerWindow

    source = Frames()
    view = ViewerWindow(root, source, out_dir=tmp_path)
    a, b = make_frame(0, 1), make_frame(1, 1)
    source.queue.append(a)
    run_until(root, lambda: view.shown is not None, "the frame shown")
    view.save()
    view.cycle_palette()
    view.save()
    stem = f"neuralflow_{a.session:016x}_{a.seq:06d}_step{a.step}"
    for name, palette in ((stem, "seed"), (f"{stem}_2", "viridis")):
        with Image.open(tmp_path / f"{name}.png") as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), colorize_array(a.pixels, palette))
        assert (tmp_path / f"{name}_guide.png").exists()

    view.toggle_diff()  # pins a
    source.queue.append(b)
    run_until(root, lambda: view.shown is b, "the next frame shown")
    view.save()
    view.pin_reference()  # b against itself
    view.save()
    stem = f"neuralflow_{b.session:016x}_{b.seq:06d}_step{b.step}_diff"
    for name, pixels in ((stem, difference(b, a)[0]), (f"{stem}_2", np.full_like(b.pixels, 128))):
        with Image.open(tmp_path / f"{name}.png") as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), colorize_array(pixels, "diverging"))
    assert len(list(tmp_path.glob("*.png"))) == 8


def test_recordings_never_overwrite(root, tmp_path, monkeypatch):
    """Two recordings in the same second with as many frames, the first still being written when
    the second stops: two GIFs, each with its own palette."""
    from neuralflow.viewer import window as window_module
    from neuralflow.viewer.window import ViewerWindow

    write, release = window_module.write_animation, threading.Event()

    def held(frames, path, **options):
        assert release.wait(30)
        return write(frames, path, **options)

    monkeypatch.setattr(window_module, "write_animation", held)
    monkeypatch.setattr(window_module.time, "strftime", lambda pattern: "20250101_120000")  # the same second
    source = Frames()
    view = ViewerWindow(root, source, out_dir=tmp_path)
    recorded = {}
    for palette, first in (("seed", 0), ("viridis", 10)):
        view.palette = palette
        view.toggle_recording()
        recorded[palette] = [make_frame(k, 1) for k in range(first, first + 3)]
        source.queue.extend(recorded[palette])
        run_until(root, lambda: len(view.recording) == 3, "frames recorded")
        view.toggle_recording()
    release.set()
    run_until(root, lambda: len(view.saved) == 2, "both recordings written")
    first, second = tmp_path / "neuralflow_20250101_120000_3f.gif", tmp_path / "neuralflow_20250101_120000_3f_2.gif"
    assert sorted(tmp_path.glob("*.gif")) == [first, second]
    for path, palette in ((first, "seed"), (second, "viridis")):
        with Image.open(path) as image:
            assert image.n_frames == 3
            np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[:64],
                                          colorize_array(recorded[palette][0].pixels, palette))


def test_step_at_the_newest_frame_stops_at_the_next(root, tmp_path):
    """. at the newest frame, then five frames in one poll: the next frame shows, not the newest."""
    from neuralflow.viewer.window import ViewerWindow

    source = Frames()
    view = ViewerWindow(root, source, out_dir=tmp_path)
    source.queue.append(make_frame(0, 1))
    run_until(root, lambda: view.shown is not None, "the first frame shown")
    view.toggle_pause()
    view.step()
    source.queue.extend(make_frame(k, 1) for k in range(1, 6))
    run_until(root, lambda: view.total == 6, "the five frames taken")
    assert view.shown.seq == 1 and view.cursor == 1
    view.step()
    assert view.shown.seq == 2


@pytest.mark.parametrize("replaying", [True, False], ids=["replay", "stream"])
def test_a_paused_replay_waits_and_a_paused_stream_is_drained(root, tmp_path, replaying):
    from neuralflow.viewer.window import ViewerWindow

    source = Endless(replaying)
    view = ViewerWindow(root, source, out_dir=tmp_path)
    polls = []
    view._poll = lambda: polls.append(1) or ViewerWindow._poll(view)  # the next polls come here
    run_until(root, lambda: view.shown is not None, "frames shown")
    view.toggle_pause()
    paused = view.total
    if not replaying:
        run_until(root, lambda: view.total > paused, "frames still taken while paused")
        return
    polls.clear()
    run_until(root, lambda: len(polls) >= 10, "ten polls while paused")
    assert view.total == paused == source.sent, "a paused replay must not be read on"
    shown = view.shown.seq
    view.step()  # at the newest: takes exactly the next frame
    run_until(root, lambda: view.shown.seq == shown + 1, "the stepped frame")
    polls.clear()
    run_until(root, lambda: len(polls) >= 10, "ten polls after the step")
    assert view.total == paused + 1 == source.sent
    view.toggle_pause()
    run_until(root, lambda: view.total > paused + 1, "the replay playing on after resume")


def test_the_in_rate_counts_every_arrival(root, tmp_path):
    from neuralflow.viewer.window import ViewerWindow

    view = ViewerWindow(root, Frames(), out_dir=tmp_path)
    frame, start = make_frame(0, 1), time.monotonic()
    for _ in range(2000):
        view._take(frame)
    view._update_stats()
    assert time.monotonic() - start < 0.9, "too slow to check a rate over one second"
    assert "shown, 2000 in" in view.stats_label.cget("text")


@pytest.mark.parametrize("echo", [True, False])
def test_status_lines_reach_stderr_unless_told_not_to(root, tmp_path, capsys, echo):
    """The demo streams its text on the terminal and keeps the window's status in the window."""
    from neuralflow.viewer.window import ViewerWindow

    source = Frames()
    source.queue.append(make_frame(0, 1))
    view = ViewerWindow(root, source, out_dir=tmp_path, echo=echo)
    run_until(root, lambda: view.total > 0, "a first frame")
    assert "first frame" in view.status_label.cget("text")
    assert ("neuralflow view: first frame" in capsys.readouterr().err) == echo


@pytest.mark.parametrize("train", [False, True])
def test_the_demos_in_the_window_finish_when_it_closes(display, tmp_path, train):
    """`neuralflow demo` opens the window beside the work (generation, or training with
    --train); q closes it, the work finishes (unpaced, or stopped) and the demo exits 0."""
    command = [sys.executable, "-m", "neuralflow.viewer.cli", "demo", "--quick", "--out", str(tmp_path)]
    proc = subprocess.Popen(command + (["--train"] if train else []), env=dict(os.environ, DISPLAY=display),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("the viewer window is open" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        env = dict(os.environ, DISPLAY=display)
        wid = wait_for(lambda: subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "neuralflow view"],
                                              env=env, capture_output=True, text=True).stdout.split(),
                       20, "the window to appear")[0]
        xdotool(display, "windowfocus", "--sync", wid)
        xdotool(display, "key", "q")
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert ("probes in" if train else "replay with") in rest
