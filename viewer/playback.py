"""Recording files as the command line uses them: record a stream, replay it, export it (torch-free).

    neuralflow record --connect tcp://127.0.0.1:5555 --out run.nfrec --count 500
    neuralflow view --replay run.nfrec            (ReplaySource feeds the window)
    neuralflow export run.nfrec --gif run.gif --png-dir frames/

- `record_to_file(endpoints, path, ...)`: subscribe and append every frame to a recording
  (viewer/recording.py format) until a count, a duration or Ctrl-C; prints progress.
- `ReplaySource(recording, fps=...)`: a frame source with the Subscriber's recv/state/stats,
  handing out a recording's frames in order at the recorded pace (or a fixed fps), so the
  live window can play it back unchanged.
- `export(recording, gif=..., png_dir=...)`: the recording's frames as an animation and/or PNGs.
A recording cut off mid-write replays and exports up to the cut, and records that damage hit
are skipped; both say so.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import threading
import time
from pathlib import Path

from .recording import Recording, RecordingError, RecordingWriter
from .record import Progress, default_zoom, drop_stale_frames, rejected_note, save_png, write_animation


RECORD_HWM = 1000  # frames a recorder's socket holds while the disk is behind; past that
# ZeroMQ drops (memory stays bounded) and the recording shows the gaps
DRAIN_S = 2.0  # seconds a stopped recorder goes on writing the frames already queued


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C or SIGTERM arriving inside the block acts as it ends: a record is written whole
    and counted (cut in two, it would be damage in the middle of the file). Python runs signal
    handlers in the main thread only, so elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    before = {number: signal.signal(number, lambda n, _: caught.append(n))
              for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # (None: set in C)
        for number in caught[:1]:
            signal.raise_signal(number)  # now, to the handler it was meant for


def record_to_file(endpoints: str | list[str], path: str | Path, *, count: int | None = None,
                   duration: float | None = None, every_s: float | None = None, quiet: bool = False) -> dict:
    """Append frames from `endpoints` to the recording at `path` (created, or appended to).

    Stops after `count` frames, `duration` seconds, Ctrl-C or SIGTERM; frames already queued by
    then are written too, for up to DRAIN_S seconds (Ctrl-C again stops at once). Progress goes to
    stderr every `every_s` seconds (default: 0.5 on a terminal, rewriting one line; 10
    otherwise). Returns {"path", "frames", "stats"}.
    """
    from .stream import Subscriber  # here: export and replay need no sockets

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    writer = RecordingWriter(path)  # RecordingError if `path` exists and is not a recording
    if writer.cut_bytes:
        say(f"neuralflow record: {path} ended in a cut-off record ({writer.cut_bytes} bytes, an "
            f"earlier recorder stopped mid-write); removed it, appending after the last whole frame")
    start, progress = time.monotonic(), Progress(every_s, quiet)
    sub = Subscriber(endpoints, latest_only=False, hwm=RECORD_HWM)
    where = ", ".join([endpoints] if isinstance(endpoints, str) else endpoints)
    say(f"neuralflow record: waiting for frames on {where}, writing {path} (Ctrl-C stops)")

    def write_while(more, timeout: float, line) -> None:
        """Write frames from `sub` while more(); Ctrl-C or SIGTERM ends it."""
        try:
            while more():
                frame = sub.recv(timeout=timeout)  # (None also for a repeat or a rejected message)
                if frame is not None:
                    with _signals_held():
                        writer.write(frame)
                progress.update(line)
        except KeyboardInterrupt:
            pass

    room = lambda: count is None or writer.frames < count  # noqa: E731
    try:
        write_while(lambda: room() and (duration is None or time.monotonic() - start < duration), 0.05,
                    lambda: f"neuralflow record: {writer.frames} frames, "
                            f"{sub.stats['gaps']} dropped upstream, {sub.state}")
        # then what is queued already (a live publisher goes on sending: bounded in time)
        stop = time.monotonic() + DRAIN_S
        write_while(lambda: room() and time.monotonic() < stop and sub.pending(), 0,
                    lambda: f"neuralflow record: {writer.frames} frames, writing the frames "
                            f"queued before the stop (Ctrl-C: stop now)")
        stats = dict(sub.stats)
    finally:
        progress.done()
        sub.close()
        writer.close()
    rejected = rejected_note(stats, sub.last_error)
    wrote = (f"appended {writer.frames} frames to {path}, which now holds {writer.before + writer.frames}"
             if writer.before else f"wrote {writer.frames} frames to {path}")
    say(f"neuralflow record: {wrote} ({stats['gaps']} dropped upstream{'; ' + rejected if rejected else ''})")
    return {"path": Path(path), "frames": writer.frames, "stats": stats}


def damage_note(recording: Recording) -> str:
    """What a reader of `recording` missed, as a parenthesis for a summary line ("" if nothing)."""
    notes = [f"skipped {recording.damaged} damaged record(s)"] if recording.damaged else []
    notes += ["the file is cut off after its last whole frame"] if recording.truncated else []
    return f" ({'; '.join(notes)})" if notes else ""


def open_recording(path: str | Path) -> Recording:
    """The recording at `path`, or RecordingError saying why not (missing, not one, empty)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise RecordingError(f"{path} is empty (a recorder that has not written yet?)")
    recording = Recording(path)
    if len(recording) == 0:
        cut = " (cut off in its first record)" if recording.truncated else ""
        raise RecordingError(f"{path} holds no whole frame{cut}")
    return recording


class ReplaySource:
    """Frames of a recording, one per recv(), at the recorded pace (fps=None) or at `fps`.

    Gaps in the recorded capture times are capped at `max_gap_s`. `state` is "replay" while
    frames remain and "end" after the last (recv then returns None at once); `loop=True`
    starts over instead. A damaged record is skipped (counted in stats["rejected"]).
    """

    replaying = True  # capture times are from the past: the window shows no lag

    def __init__(self, recording: Recording, *, fps: float | None = None, loop: bool = False,
                 max_gap_s: float = 1.0):
        self.recording, self.fps, self.loop, self.max_gap_s = recording, fps, loop, max_gap_s
        self.index = 0
        self.stats = {"received": 0, "gaps": 0, "rejected": 0, "skipped": 0}
        self._pending = None  # the next frame, read but not yet due
        self._due = self._shown_at = time.monotonic()
        self._previous_ns: int | None = None  # the last frame's capture time
        self._first_ns: int | None = None  # the recording's first capture time
        self._wrapped = False  # the next frame starts the recording over

    @property
    def state(self) -> str:
        more = self._pending is not None or self.index < len(self.recording)
        return "replay" if self.loop or more else "end"

    def recv(self, timeout: float | None = None):
        """The next frame once it is due, else None after at most `timeout` seconds (None: wait
        until it is due; at the end, without loop, None at once)."""
        if self._pending is None:
            if self.index >= len(self.recording):
                if not self.loop or len(self.recording) == 0:
                    return None
                self.index, self._wrapped = 0, True
            self._pending = self._next_frame()
            if self._pending is None:
                return None
            self._due = self._shown_at + self._gap(self._pending)
        wait = self._due - time.monotonic()
        if timeout is not None and wait > timeout:
            time.sleep(timeout)
            return None
        time.sleep(max(wait, 0.0))
        frame, self._pending = self._pending, None
        self._shown_at = max(self._due, time.monotonic() - 0.1)  # keep the pace, don't race to catch up
        self._previous_ns, self._wrapped = frame.time_ns, False
        if self._first_ns is None:
            self._first_ns = frame.time_ns
        self.stats["received"] += 1
        return frame

    def _next_frame(self):
        """The next readable frame, or None past the end (damaged records are skipped)."""
        while self.index < len(self.recording):
            self.index += 1
            try:
                return self.recording[self.index - 1]
            except ValueError:  # damage hit this record (its checksum fails; counted there)
                self.stats["rejected"] += 1
        return None

    def _gap(self, frame) -> float:
        """Seconds between the previous frame and `frame`: 1/fps, or the recorded gap, capped."""
        if self.fps:
            return 1.0 / self.fps
        if self._previous_ns is None:
            return 0.0
        if self._wrapped:  # from the last frame to the first: the recording's mean gap
            frames = len(self.recording)
            gap = (self._previous_ns - self._first_ns) / 1e9 / (frames - 1) if frames > 1 else 1 / 15
        else:
            gap = (frame.time_ns - self._previous_ns) / 1e9
        return min(max(gap, 0.0), self.max_gap_s)

    def close(self) -> None:
        pass


MAX_SIDE = 65535  # pixels: the most a GIF holds a side
LONG_EXPORT = 200  # frames: an export this long says so when it starts


def export(path: str | Path, *, gif: str | Path | None = None, png_dir: str | Path | None = None,
           palette: str = "seed", fps: float = 15.0, zoom: int | None = None, guide: bool = False,
           caption: bool = True, count: int | None = None, quiet: bool = False) -> dict:
    """Write a recording's frames (the first `count`, or all) as an animation (GIF, or APNG for
    .png/.apng) and/or one PNG each (png_dir/frame_NNNNNN.png). zoom None: the smallest that
    makes the picture at least 256 px wide (and its caption readable). Returns {"frames", "gif",
    "pngs", "truncated", "damaged"}."""
    recording = open_recording(path)
    total = min(len(recording), count or len(recording))
    if not quiet and total >= LONG_EXPORT:  # seconds, maybe minutes: say so now, not only when done
        print(f"neuralflow: exporting {total} frames from {path} ...", file=sys.stderr, flush=True)
    frames = list(itertools.islice(recording, count))  # skips damaged records, counting them
    if not frames:
        raise RecordingError(f"{path} holds no readable frame (damage hit all {len(recording)} records)")
    tallest, widest = max(f.height for f in frames), max(f.width for f in frames)
    if zoom is None:
        zoom = default_zoom(widest, tallest)
    elif zoom * max(tallest, widest) > MAX_SIDE:
        raise RecordingError(f"zoom {zoom} makes {widest} x {tallest} pictures {zoom * widest} x "
                             f"{zoom * tallest} px; at most {MAX_SIDE} a side (zoom {MAX_SIDE // max(tallest, widest)} or less)")
    pngs, stale = [], 0
    if png_dir is not None:
        folder = Path(png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        pngs = [save_png(f, folder / f"frame_{i:06d}.png", palette=palette, guide=guide, zoom=zoom)
                for i, f in enumerate(frames)]
        stale = drop_stale_frames(pngs)
    animation = None
    if gif is not None:
        animation = write_animation(frames, gif, palette=palette, fps=fps, zoom=zoom, text=caption)
    if not quiet:
        deleted = f" (deleted {stale} frame PNGs an earlier, longer export left there)" if stale else ""
        wrote = [f"{len(pngs)} PNGs in {png_dir}{deleted}"] if png_dir is not None else []
        wrote += [f"the animation {animation}"] if animation else []
        print(f"neuralflow: {len(frames)} frames from {path}: wrote {' and '.join(wrote)}"
              f"{damage_note(recording)}", file=sys.stderr, flush=True)
    return {"frames": len(frames), "gif": animation, "pngs": pngs, "truncated": recording.truncated,
            "damaged": recording.damaged}
