"""The live window: newest frame, layer guide, stats and controls, in Tk with Pillow (torch-free).

    neuralflow view [--connect tcp://127.0.0.1:5555]      (viewer/cli.py builds it)

The picture is the newest frame, scaled up with nearest neighbour at the largest integer zoom
that fits the window, with the layer guide beside it row for row. The side panel shows the
connection state (waiting / live / silent), token and step, model, frames per second, lag from
capture to screen, dropped frames (seq gaps), rejected messages, and what the mouse points at.

Keys (buttons do the same): space pause/resume, Left/Right scrub the last `history` frames,
"." step one frame, p next palette, s save PNG (full resolution, plain and with guide),
r start/stop recording (GIF, or APNG with `neuralflow view --apng`; 15 fps, loops), f pin the shown frame as
reference, d difference to the reference (diverging palette) with a per-layer drift bar, q quit
(once every recording still being written is on disk). Saves and recordings never overwrite a
file: a name already taken gets _2, _3 ...

The Tk loop never blocks: every `poll_ms` an `after` callback takes whatever the subscriber
has (recv(timeout=0), up to 64 frames) into the history and any recording, and shows the
newest; a paused replay is not read on (it waits). New sessions, new geometries and errors
are reported in the status line (and as one line on stderr) and the window keeps going.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import tkinter as tk
from pathlib import Path

import numpy as np
from PIL import Image, ImageTk

from .frame import Frame
from .guide import GAP, guide_for
from .palette import difference, indexed, lut, next_palette, same_geometry
from .record import save_png, write_animation

STATE_COLOURS = {"waiting": "#b58900", "live": "#2e8b57", "silent": "#c0392b"}
GUIDE_WIDTH = 150
DRIFT_WIDTH = 200
SIDE_WIDTH = 280
RECORD_LIMIT = 5000  # frames; recording stops itself there


def _geometry(frame: Frame) -> str:
    return f"{frame.height}x{frame.width} px, {frame.layers} layers x {frame.hidden} dims, {frame.layout}"


class ViewerWindow:
    """The window around a frame source (a Subscriber, or anything with recv/stats/state).

    Build it on a Tk root, then run root.mainloop() (viewer/cli.py does both).
    """

    def __init__(self, root: tk.Tk, source, *, palette: str = "seed", history: int = 512,
                 out_dir: str | Path = ".", record_fps: float = 15.0, record_format: str = "gif",
                 poll_ms: int = 4, where: str = "", echo: bool = True):
        lut(palette)  # unknown names fail here, not in the loop
        self.echo = echo  # status lines on stderr too (off where stderr is busy, as in the demo)
        self.root, self.source = root, source
        self.palette, self.out_dir, self.poll_ms, self.where = palette, Path(out_dir), poll_ms, where
        self.record_fps, self.record_format = record_fps, record_format
        self.history: collections.deque[Frame] = collections.deque(maxlen=history)
        self.total = 0  # frames ever taken in; history holds indices total-len .. total-1
        self.cursor: int | None = None  # index of the frame shown while paused; None = live
        self.step_pending = False
        self.latest: Frame | None = None
        self.shown: Frame | None = None
        self.shown_pixels: np.ndarray | None = None  # what the picture shows (frame or difference)
        self.reference: Frame | None = None
        self.diff = False
        self.recording: list[Frame] | None = None
        self.record_palette = palette
        self.saved: list[Path] = []
        self.errors = 0
        self.zoom = 0
        self.showing_diff = False
        self._mouse: tuple[int, int] | None = None  # canvas (y, x) under the pointer
        self._photo: ImageTk.PhotoImage | None = None
        self._photo_size = None
        self._writers: list[tuple[threading.Thread, Path]] = []  # recordings being written, and where
        self._closing = False
        self._guide_photo = self._drift_photo = None
        self._guide_key = None
        self._shown_times: collections.deque[float] = collections.deque(maxlen=512)
        self._arrivals: collections.deque[list] = collections.deque()  # [time, frames] per 10 ms, the last second
        self._lags: collections.deque[float] = collections.deque(maxlen=60)
        self._messages: list[str] = []  # from the recording thread, read by the Tk loop
        self._sessions: set[int] = set()
        self._geometries: set[str] = set()
        self._build()
        self._after = self.root.after(self.poll_ms, self._poll)
        self._tick_after = self.root.after(250, self._tick)

    # ---- widgets ------------------------------------------------------------------------------

    def _build(self):
        root = self.root
        root.title("neuralflow view")
        root.configure(bg="#1e1e22")
        top = tk.Frame(root, bg="#1e1e22")
        top.pack(side="top", fill="x")
        self.state_label = tk.Label(top, text=" waiting ", fg="white", bg=STATE_COLOURS["waiting"],
                                    font=("TkDefaultFont", 11, "bold"), padx=8)
        self.state_label.pack(side="left", padx=4, pady=4)
        self.info_label = tk.Label(top, text=f"waiting for a publisher {self.where}", fg="white",
                                   bg="#1e1e22", anchor="w", font=("TkDefaultFont", 11))
        self.info_label.pack(side="left", fill="x", expand=True)

        bottom = tk.Frame(root, bg="#1e1e22")
        bottom.pack(side="bottom", fill="x")
        self.status_label = tk.Label(bottom, text="", fg="#d8dee9", bg="#1e1e22", anchor="w")
        self.status_label.pack(side="bottom", fill="x", padx=4)
        buttons = tk.Frame(bottom, bg="#1e1e22")
        buttons.pack(side="bottom", fill="x")
        for text, command in [("Pause [space]", self.toggle_pause), ("< [Left]", self.back),
                              ("> [Right]", self.forward), ("Step [.]", self.step),
                              ("Palette [p]", self.cycle_palette), ("Save PNG [s]", self.save),
                              ("Record [r]", self.toggle_recording), ("Pin ref [f]", self.pin_reference),
                              ("Diff [d]", self.toggle_diff)]:
            tk.Button(buttons, text=text, command=command, takefocus=0).pack(side="left", padx=2, pady=2)

        side = tk.Frame(root, bg="#1e1e22", width=SIDE_WIDTH)
        side.pack(side="right", fill="y", padx=4)
        side.pack_propagate(False)  # fixed width: changing text must not resize the window
        self.stats_label = tk.Label(side, text="", fg="#d8dee9", bg="#1e1e22", justify="left",
                                    anchor="nw", font=("TkFixedFont", 10))
        self.stats_label.pack(side="top", fill="x")
        self.hover_label = tk.Label(side, text="", fg="#ebcb8b", bg="#1e1e22", justify="left",
                                    anchor="nw", font=("TkFixedFont", 10), wraplength=SIDE_WIDTH - 8)
        self.hover_label.pack(side="top", fill="x", pady=(8, 0))
        self.palette_bar = tk.Label(side, bg="#1e1e22")
        self.palette_bar.pack(side="top", pady=(8, 0))
        self.drift_title = tk.Label(side, text="", fg="#d8dee9", bg="#1e1e22", justify="left", anchor="w",
                                    font=("TkFixedFont", 10))
        self.drift_title.pack(side="top", fill="x", pady=(8, 0))
        self.drift_label = tk.Label(side, bg="#1e1e22")
        self.drift_label.pack(side="top")

        # Room for a 256x512 frame at 2x with its guide; zoom follows the window from then on.
        self.canvas = tk.Canvas(root, width=2 * 512 + GAP + GUIDE_WIDTH, height=2 * 256, bg="#1e1e22",
                                highlightthickness=0)
        self.canvas.pack(side="left", fill="both", expand=True)
        self.picture_item = self.canvas.create_image(0, 0, anchor="nw")
        self.guide_item = self.canvas.create_image(0, 0, anchor="nw")
        self.waiting_item = self.canvas.create_text(20, 20, anchor="nw", fill="#d8dee9",
                                                    text=f"waiting for frames {self.where}")
        self._draw_palette_bar()

        self.canvas.bind("<Configure>", lambda e: self._fit())
        self.canvas.bind("<Motion>", self._hover)
        self.canvas.bind("<Leave>", self._leave)
        for key, command in [("<space>", self.toggle_pause), ("<Left>", self.back), ("<Right>", self.forward),
                             ("<period>", self.step), ("p", self.cycle_palette), ("s", self.save),
                             ("r", self.toggle_recording), ("f", self.pin_reference), ("d", self.toggle_diff),
                             ("q", self.close), ("<Escape>", self.close)]:
            root.bind(key, lambda e, c=command: c())
        root.protocol("WM_DELETE_WINDOW", self.close)

    def _leave(self, event):
        self._mouse = None
        self.hover_label.configure(text="")

    def _draw_palette_bar(self):
        name = "diverging" if self.diff else self.palette
        bar = np.repeat(lut(name)[None], 10, axis=0)
        self._palette_photo = ImageTk.PhotoImage(Image.fromarray(bar, "RGB").resize((DRIFT_WIDTH, 10)))
        self.palette_bar.configure(image=self._palette_photo)

    # ---- frames in ------------------------------------------------------------------------------

    def _poll(self):
        try:
            # A paused replay is not read on (it would play on unseen, out of the history), but
            # for one frame when a step waits for it; a live stream is drained as ever.
            held = self.cursor is not None and getattr(self.source, "replaying", False)
            if held and not self.step_pending:
                return
            newest = None
            for _ in range(1 if held else 64):  # bounded: the loop must come back to Tk
                frame = self.source.recv(timeout=0)
                if frame is None:
                    break
                self._take(frame)
                newest = frame
            if newest is not None and self.cursor is None:
                self._show(newest, live=True)
            elif newest is not None and self.step_pending:
                self._go(self.cursor + 1)  # the frame after the shown one, however many came
        except Exception as e:  # the window outlives a broken source or frame; say so, keep polling
            self.errors += 1
            self.say(f"error: {type(e).__name__}: {e}")
        finally:
            self._after = self.root.after(self.poll_ms, self._poll)

    def _take(self, frame: Frame):
        # Announce sessions and geometries the first time they appear (several engines may alternate).
        news = []
        if frame.session not in self._sessions:
            self._sessions.add(frame.session)
            if self.latest is not None:
                news.append(f"new session {frame.session:016x} (publisher restarted, or another engine)")
        geometry = _geometry(frame)
        if geometry not in self._geometries:
            self._geometries.add(geometry)
            news.append(f"{'new geometry' if self.latest is not None else 'first frame'}: {geometry}")
        if news:
            self.say("; ".join(news))
        self.latest = frame
        self.history.append(frame)
        self.total += 1
        now = time.monotonic()
        if self._arrivals and now - self._arrivals[-1][0] < 0.01:
            self._arrivals[-1][1] += 1  # counts, not one time per frame: any rate, bounded memory
        else:
            self._arrivals.append([now, 1])
        while now - self._arrivals[0][0] > 1.0:
            self._arrivals.popleft()
        if self.recording is not None:
            self.recording.append(frame)
            if len(self.recording) >= RECORD_LIMIT:
                self.toggle_recording()

    # ---- picture ----------------------------------------------------------------------------------

    def _best_zoom(self, frame: Frame) -> int:
        width, height = self.canvas.winfo_width(), self.canvas.winfo_height()
        if width <= 1:  # not mapped yet: use the size asked for
            width, height = self.canvas.winfo_reqwidth(), self.canvas.winfo_reqheight()
        return max(1, min((width - GAP - GUIDE_WIDTH) // frame.width, height // frame.height))

    def _fit(self):
        if self.shown is not None and self._best_zoom(self.shown) != self.zoom:
            self._show(self.shown)

    def _show(self, frame: Frame, live: bool = False):
        """Draw `frame` (as itself or as its difference to the reference) at the best zoom."""
        self.shown, self.zoom = frame, self._best_zoom(frame)
        pixels, palette, self.showing_diff = frame.pixels, self.palette, False
        if self.diff and self.reference is not None:
            if same_geometry(frame, self.reference):
                pixels, drift = difference(frame, self.reference)
                palette, self.showing_diff = "diverging", True
                self._draw_drift(drift)
            else:
                self.say("reference has another geometry: showing the frame itself (press f to re-pin)")
                self.diff = False
                self._draw_palette_bar()
                self._draw_drift(None)
        self.shown_pixels = pixels
        image = indexed(pixels, palette, self.zoom)
        if self._photo is None or self._photo_size != image.size:
            self._photo, self._photo_size = ImageTk.PhotoImage(image), image.size
            self.canvas.itemconfigure(self.picture_item, image=self._photo)
        else:
            self._photo.paste(image)  # in place: no new Tk image per frame
        guide_key = (frame.layers, frame.hidden, frame.width, frame.layout, self.zoom)
        if guide_key != self._guide_key:
            self._guide_key = guide_key
            self._guide_photo = ImageTk.PhotoImage(guide_for(frame, self.zoom, GUIDE_WIDTH))
            self.canvas.itemconfigure(self.guide_item, image=self._guide_photo)
            self.canvas.coords(self.guide_item, frame.width * self.zoom + GAP, 0)
            self.canvas.itemconfigure(self.waiting_item, text="")
        self._shown_times.append(time.monotonic())
        if live and frame.time_ns > 0 and not getattr(self.source, "replaying", False):
            self._lags.append((time.time_ns() - frame.time_ns) / 1e6)
        self._describe(frame)
        self._hover()

    def _describe(self, frame: Frame):
        token = frame.meta.get("token")
        parts = [f"step {frame.step}", f"pos {frame.position}"]
        if token is not None:
            parts.insert(0, f"token {token!r}")
        if frame.meta.get("label"):
            parts.append(frame.meta["label"])
        if frame.meta.get("model"):
            parts.append(f"model {frame.meta['model']}")
        self.info_label.configure(text="   ".join(parts))

    def _draw_drift(self, drift: np.ndarray | None):
        if drift is None:
            self.drift_title.configure(text="")
            self.drift_label.configure(image="")
            self._drift_photo = None
            return
        worst = int(np.argmax(drift))
        group = -(-len(drift) // 256)  # many layers: one bar per group, showing the group's max
        shown = np.pad(drift, (0, -len(drift) % group)).reshape(-1, group).max(axis=1)
        rows = max(1, min(6, 256 // len(shown)))
        scale = max(float(shown.max()), 1.0)
        length = np.rint(shown / scale * DRIFT_WIDTH).astype(int)
        bars = np.arange(DRIFT_WIDTH)[None, :] < length[:, None]
        image = np.where(bars[..., None], np.array([208, 80, 70], np.uint8), np.array([46, 52, 64], np.uint8))
        image = np.repeat(image, rows, axis=0)
        self._drift_photo = ImageTk.PhotoImage(Image.fromarray(image.astype(np.uint8), "RGB"))
        self.drift_label.configure(image=self._drift_photo)
        self.drift_title.configure(text=f"drift per layer, mean |dq|\n(layer 0 on top)\n"
                                        f"max {drift[worst]:.1f} at layer {worst}")

    def _hover(self, event=None):
        """Describe the pixel under the mouse (called on motion and after every redraw)."""
        if event is not None:
            self._mouse = (int(self.canvas.canvasy(event.y)), int(self.canvas.canvasx(event.x)))
        frame, zoom = self.shown, self.zoom
        if frame is None or not zoom or self._mouse is None:
            return
        y, x = self._mouse[0] // zoom, self._mouse[1] // zoom
        if not (0 <= y < frame.height and 0 <= x < frame.width):
            self.hover_label.configure(text="")
            return
        layer, dim = frame.locate(y, x)
        q = int(frame.pixels[y, x])
        lines = [f"row {y} col {x}", f"layer {layer}  dim {dim if dim is not None else '(padding)'}"]
        span = frame.value_range(y, x)
        if span is None:
            lines.append(f"q {q} overflow: |x| >= {float(frame.hi[layer]):.4g}, padding or not finite")
        else:
            lines.append(f"q {q}: |x| in [{span[0]:.4g}, {span[1]:.4g})")
        if self.showing_diff:
            lines.append(f"vs reference: dq {q - int(self.reference.pixels[y, x]):+d}")
        self.hover_label.configure(text="\n".join(lines))

    # ---- controls ---------------------------------------------------------------------------------

    def _at(self, index: int) -> Frame:
        return self.history[index - (self.total - len(self.history))]

    def _first(self) -> int:
        return self.total - len(self.history)

    def toggle_pause(self):
        if self.cursor is None:
            if self.shown is not None:
                self.cursor = self.total - 1
                self.say("paused")
        else:
            self.cursor, self.step_pending = None, False
            self.say("live")
            if self.latest is not None:
                self._show(self.latest)

    def _go(self, index: int):
        if not self.history:
            return
        self.step_pending = False  # moving cancels a step still waiting for a frame
        self.cursor = max(self._first(), min(self.total - 1, index))
        self._show(self._at(self.cursor))

    def back(self):
        if not self.history:
            return
        if self.cursor is None:
            self.cursor = self.total - 1
        self._go(self.cursor - 1)

    def forward(self):
        if self.cursor is not None:
            self._go(self.cursor + 1)

    def step(self):
        """One frame forward; at the newest frame, wait for the next one and stop there."""
        if not self.history:
            return  # no frame to step from: stay live
        if self.cursor is None:
            self.cursor = self.total - 1
        if self.cursor < self.total - 1:
            self._go(self.cursor + 1)
        else:
            self.step_pending = True

    def cycle_palette(self):
        self.palette = next_palette(self.palette)
        self._draw_palette_bar()
        self.say(f"palette {self.palette}")
        self._redraw()

    def _redraw(self):
        if self.shown is not None:
            self._show(self.shown)

    def pin_reference(self):
        if self.shown is not None:
            self.reference = self.shown
            self.say(f"reference pinned: step {self.shown.step} (seq {self.shown.seq})")
            self._redraw()

    def toggle_diff(self):
        if not self.diff and self.reference is None:
            self.pin_reference()
            if self.reference is None:
                self.say("no frame yet to use as reference")
                return
        self.diff = not self.diff
        self._draw_palette_bar()
        if not self.diff:
            self._draw_drift(None)
        self.say("difference to reference" if self.diff else "difference off")
        self._redraw()

    def save(self):
        frame = self.shown
        if frame is None:
            self.say("nothing to save yet")
            return
        diff = self.showing_diff
        stem = self._free_name(f"neuralflow_{frame.session:016x}_{frame.seq:06d}_step{frame.step}"
                               + ("_diff" if diff else ""), (".png", "_guide.png"))
        shown = frame.replace(pixels=self.shown_pixels)
        palette = "diverging" if diff else self.palette
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            paths = [save_png(shown, self.out_dir / f"{stem}.png", palette=palette),
                     save_png(shown, self.out_dir / f"{stem}_guide.png", palette=palette, guide=True)]
        except OSError as e:
            self.say(f"save failed: {e}")
            return
        self.saved.extend(paths)
        self.say(f"saved {paths[0]} and {paths[1].name}")

    def toggle_recording(self):
        if self.recording is None:
            self.recording, self.record_palette = [], self.palette
            self.say(f"recording ({self.record_format}, {self.record_fps:g} fps)")
            return
        # The writer keeps its own palette: the next r sets record_palette anew while it writes.
        frames, palette, self.recording = self.recording, self.record_palette, None
        if not frames:
            self.say("recording stopped: no frames arrived")
            return
        suffix = ".png" if self.record_format == "apng" else ".gif"
        stem = self._free_name(f"neuralflow_{time.strftime('%Y%m%d_%H%M%S')}_{len(frames)}f", (suffix,))
        path = self.out_dir / f"{stem}{suffix}"
        self.say(f"writing {len(frames)} frames to {path} ...")

        # off the Tk thread, reporting back through the messages list. It holds no reference to
        # the window: if it held the last one, Tk objects would be freed on this thread, which
        # Tcl refuses ("async handler deleted by the wrong thread") by aborting the process.
        messages, saved, fps = self._messages, self.saved, self.record_fps

        def write():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_animation(frames, path, palette=palette, fps=fps, text=True)
                messages.append(f"recording saved: {path}")
                saved.append(path)
            except Exception as e:
                messages.append(f"recording failed: {e}")

        writer = threading.Thread(target=write, name="neuralflow-record", daemon=True)
        writer.start()  # now, before the next key: its path counts as taken from here on
        self._writers = [w for w in self._writers if w[0].is_alive()] + [(writer, path)]  # (done ones go)

    def _writing(self) -> list[Path]:
        """Where the recordings still being written go."""
        return [path for thread, path in self._writers if thread.is_alive()]

    def _free_name(self, stem: str, suffixes: tuple[str, ...]) -> str:
        """`stem`, or stem_2, stem_3 ...: the first with no stem+suffix on disk or being written."""
        writing = set(self._writing())
        name, n = stem, 1
        while any((self.out_dir / f"{name}{s}").exists() or self.out_dir / f"{name}{s}" in writing
                  for s in suffixes):
            n += 1
            name = f"{stem}_{n}"
        return name

    def say(self, message: str):
        """Status line, and one line on stderr for logs and tests (repeats are not reprinted)."""
        if message != self.status_label.cget("text"):
            self.status_label.configure(text=message)
            if self.echo:
                print(f"neuralflow view: {message}", file=sys.stderr, flush=True)

    # ---- stats ------------------------------------------------------------------------------------

    def _tick(self):
        try:
            self._update_stats()
        finally:
            self._tick_after = self.root.after(250, self._tick)

    def _update_stats(self):
        while self._messages:
            self.say(self._messages.pop(0))
        state = getattr(self.source, "state", "live")
        stats = getattr(self.source, "stats", {}) or {}
        now = time.monotonic()
        fps = sum(1 for t in self._shown_times if now - t < 1.0)
        rate = sum(n for t, n in self._arrivals if now - t < 1.0)
        lag = f"{np.median(self._lags):.1f} ms" if self._lags else "-"
        if self.cursor is None:
            mode = "live"
        elif self.cursor < self._first():  # paused so long that the frame left the history
            mode = f"paused, {self._first() - self.cursor} before {len(self.history)} kept"
        else:
            mode = f"paused {self.cursor - self._first() + 1}/{len(self.history)}"
        view = "diff" if self.diff else self.palette
        lines = [f"fps      {fps} shown, {rate} in", f"lag      {lag}",
                 f"dropped  {stats.get('gaps', 0)}", f"rejected {stats.get('rejected', 0)}",
                 f"skipped  {stats.get('skipped', 0)}", f"view     {mode}, {view}",
                 f"ref      {'step %d' % self.reference.step if self.reference else '-'}"]
        if self.recording is not None:
            lines.append(f"REC      {len(self.recording)} frames")
        if self.errors:
            lines.append(f"errors   {self.errors}")
        self.stats_label.configure(text="\n".join(lines))
        self.state_label.configure(text=f" {state} ", bg=STATE_COLOURS.get(state, "#555555"))
        step = f"step {self.shown.step}" if self.shown is not None else "no frame"
        self.root.title(f"neuralflow view - {state} - {mode} - {view} - {step} - "
                        f"dropped {stats.get('gaps', 0)} - rejected {stats.get('rejected', 0)}")

    def close(self):
        """Stop taking frames; the window goes once every recording being written is on disk
        (the writers are daemon threads: one cut off at exit leaves an empty file). Asked again
        while it waits (q, the close button; a disk that hangs, say), it goes at once."""
        if self._closing:
            writing = self._writing()
            try:
                if writing:
                    self.say(f"closed before {len(writing)} recording(s) were written: "
                             f"{', '.join(map(str, writing))}")
                self.root.after_cancel(self._after)
                self.root.destroy()
            except tk.TclError:  # gone already
                pass
            return
        self._closing = True
        for handle in (self._after, self._tick_after):
            self.root.after_cancel(handle)
        if self.recording is not None:
            self.toggle_recording()
        self._close_when_written()

    def _close_when_written(self, said: int = 0):
        while self._messages:
            self.say(self._messages.pop(0))
        writing = len(self._writing())
        if not writing:
            self.root.destroy()
            return
        if writing != said:  # once per count, not again after each "recording saved"
            message = (f"writing {writing} recording(s)... the window closes when they are on disk "
                       f"(q again: close now, losing them)")
            self.say(message)
            self.root.title(f"neuralflow view - {message}")
        # waits in the Tk loop: the window still redraws
        self._after = self.root.after(50, self._close_when_written, writing)
