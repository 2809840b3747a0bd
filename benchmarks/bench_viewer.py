"""Viewer speed: colorize time per 256x512 frame, and frames per second the window sustains.

    python -m pytest benchmarks/bench_viewer.py --benchmark-enable -s

Goal: the window shows 256x512 frames at 2x zoom at >= 60 fps. Needs Xvfb (started here on a
free display) or, with NEURALFLOW_BENCH_DISPLAY=:0, your own display. The window numbers come
from an in-process window: "render" is one frame drawn and flushed to the X server, "sustained"
is the Tk loop fed as fast as it can take frames, and "end to end" adds a real Publisher and
Subscriber on localhost with a publisher at 120 fps (lag = capture time stamp to screen).
"""

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.palette import colorize, difference

RNG = np.random.default_rng(0)
FRAMES = [Frame(pixels=RNG.integers(0, 256, (256, 512), dtype=np.uint8), layers=32, hidden=4096, seq=k)
          for k in range(16)]


def test_colorize_256x512(benchmark):
    frame = FRAMES[0]
    image = benchmark(colorize, frame, "seed")
    assert image.size == (512, 256)
    start = time.perf_counter()
    for k in range(200):
        colorize(FRAMES[k % 16], "seed")
    per = (time.perf_counter() - start) / 200
    print(f"\ncolorize 256x512 seed: {per * 1e3:.3f} ms per frame")
    start = time.perf_counter()
    for k in range(200):
        colorize(FRAMES[k % 16], "seed", zoom=2)
    print(f"colorize 256x512 at 2x zoom: {(time.perf_counter() - start) / 200 * 1e3:.3f} ms per frame")
    start = time.perf_counter()
    for k in range(200):
        difference(FRAMES[k % 16], FRAMES[0])
    print(f"difference + drift 256x512: {(time.perf_counter() - start) / 200 * 1e3:.3f} ms per frame")


@pytest.fixture(scope="module")
def display():
    if os.environ.get("NEURALFLOW_BENCH_DISPLAY"):
        yield os.environ["NEURALFLOW_BENCH_DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed (apt-get install xvfb)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        number = pipe.readline()
    try:
        yield f":{int(number)}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


class Endless:
    """A frame source that always has a new frame."""
    state, stats = "live", {}

    def __init__(self):
        self.k = 0

    def recv(self, timeout=None):
        self.k += 1
        return FRAMES[self.k % 16].replace(seq=self.k, time_ns=time.time_ns())


def open_window(display, source):
    os.environ["DISPLAY"] = display
    import tkinter as tk

    from neuralflow.viewer.window import ViewerWindow

    root = tk.Tk()
    view = ViewerWindow(root, source, poll_ms=1, history=64)
    root.update()
    return root, view


def test_window_fps_256x512_at_2x(benchmark, display):
    source = Endless()
    root, view = open_window(display, source)
    try:
        root.after(1000, root.quit)  # warm up
        root.mainloop()
        assert view.zoom == 2, view.zoom

        def render():
            view._show(source.recv(), live=True)
            root.update_idletasks()  # Tk redraws the canvas (sends the image to the X server) here

        benchmark(render)
        start = time.perf_counter()
        for _ in range(200):
            render()
        per = (time.perf_counter() - start) / 200
        print(f"\nwindow render 256x512 at 2x: {per * 1e3:.2f} ms per frame ({1 / per:.0f} fps)")

        view._shown_times.clear()
        start = time.monotonic()
        root.after(3000, root.quit)
        root.mainloop()
        sustained = sum(1 for t in view._shown_times if t >= start) / (time.monotonic() - start)
        print(f"window sustained (Tk loop, poll every 1 ms): {sustained:.0f} fps")
        assert sustained >= 60
    finally:
        root.destroy()


def test_window_end_to_end_fps(display):
    from neuralflow.viewer.stream import Publisher, Subscriber

    with Publisher("tcp://127.0.0.1:*") as pub:
        sub = Subscriber(pub.endpoint, latest_only=False)
        root, view = open_window(display, sub)
        view.poll_ms = 2
        stop = threading.Event()

        def publish():
            pub.wait_for_subscribers(1, timeout=5)
            k = 0
            while not stop.is_set():
                k += 1
                pub.publish(FRAMES[k % 16].replace(seq=k, time_ns=time.time_ns()))
                time.sleep(1 / 120)

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            root.after(1000, root.quit)
            root.mainloop()
            view._shown_times.clear()
            view._lags.clear()
            start = time.monotonic()
            root.after(3000, root.quit)
            root.mainloop()
            fps = len(view._shown_times) / (time.monotonic() - start)
            lag = np.median(view._lags)
            print(f"\nend to end, publisher at 120 fps: window shows {fps:.0f} fps, median lag {lag:.1f} ms, "
                  f"stats {dict((k, v) for k, v in sub.stats.items() if k != 'sessions')}")
            assert fps >= 60
        finally:
            stop.set()
            thread.join()
            root.destroy()
            sub.close()
