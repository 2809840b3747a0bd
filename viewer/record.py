"""Recording without a display: frames -> PNGs and an animated GIF/APNG (torch-free).

- `write_animation(frames, path, ...)`: a pure function, list of frames -> GIF (".gif") or
  APNG (".png"/".apng"), 15 fps and looping forever by default, as the original did; optional
  caption ("step N  token") drawn in a strip under each picture. Frames are written in palette
  mode with the palette's own table, so colours are exact (no GIF quantization).
- `record_headless(endpoints, out_dir, ...)`: subscribe, write every frame as a PNG, then the
  animation; for servers and CI. Returns (and prints) where it wrote them.
- `export_timeline(frames, out_dir, mode=...)`: one training probe's frames over steps as
  captioned PNGs and a GIF: the pictures, side by side with step 0, or the difference to it.

`neuralflow view --headless --out DIR [--count N] [--duration S]` runs record_headless.
Note: Pillow merges identical consecutive frames of an animation into one longer frame.
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from .frame import OVERFLOW, Frame
from .guide import _font, with_guide
from .palette import colorize, difference, indexed, lut

CAPTION = 14  # px of caption strip under each picture


def caption_text(frame: Frame) -> str:
    """Default caption: step, then token text or label when the frame carries one."""
    parts = [f"step {frame.step}"]
    if frame.meta.get("token"):
        parts.append(repr(frame.meta["token"]))
    elif frame.meta.get("label"):
        parts.append(frame.meta["label"])
    return "  ".join(parts)


def _captioned(image: Image.Image, text: str, palette: np.ndarray) -> Image.Image:
    """A copy of a "P" image with a caption strip under it, in the palette's darkest/lightest."""
    luma = palette.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    dark, light = int(np.argmin(luma)), int(np.argmax(luma))
    out = Image.new("P", (image.width, image.height + CAPTION), dark)
    out.putpalette(palette.tobytes(), "RGB")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.fontmode = "1"  # no anti-aliasing: only palette colours
    draw.text((3, image.height + 1), text, fill=light, font=_font(11))
    return out


def animation_frames(frames: Iterable[Frame | np.ndarray], *, palette: str = "seed", zoom: int = 1,
                     text: bool | Callable[[Frame], str] = False) -> list[Image.Image]:
    """The "P" images write_animation saves, all padded to the largest size."""
    table = lut(palette)
    images = []
    for frame in frames:
        image = indexed(frame, table, zoom)
        if text and isinstance(frame, Frame):
            image = _captioned(image, (text if callable(text) else caption_text)(frame), table)
        images.append(image)
    if not images:
        raise ValueError("no frames to write")
    width, height = max(i.width for i in images), max(i.height for i in images)
    for k, image in enumerate(images):
        if image.size != (width, height):  # a geometry change mid-recording: pad, don't fail
            padded = Image.new("P", (width, height), 255)
            padded.putpalette(table.tobytes(), "RGB")
            padded.paste(image, (0, 0))
            images[k] = padded
    return images


def write_animation(frames: Iterable[Frame | np.ndarray], path: str | os.PathLike, *,
                    palette: str = "seed", fps: float = 15.0, loop: int = 0, zoom: int = 1,
                    text: bool | Callable[[Frame], str] = False) -> Path:
    """Write frames as an animated GIF (".gif") or APNG (".png", ".apng"); returns the path.

    fps: GIF stores delays in 1/100 s, so 15 fps becomes 70 ms per frame (14.3 fps), and keeps
    them within 20 ms (50 fps) and 655 s; APNG keeps milliseconds, within 1 ms and 65 s.
    loop=0 loops forever. text=True draws `caption_text(frame)` under each
    picture; a callable(frame) -> str draws your own.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".png", ".apng"):
        raise ValueError(f"animation must be .gif, .png or .apng, not {path.name}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    images = animation_frames(frames, palette=palette, zoom=zoom, text=text)
    if suffix == ".gif":  # in 1/100 s, at most 65535; players slow anything under 2/100 s to 1/10 s
        delay = 10 * round(min(max(100.0 / fps, 2), 65535))
    else:  # ms, at most 65535
        delay = round(min(max(1000.0 / fps, 1), 65535))
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF" if suffix == ".gif" else "PNG", save_all=True,
                   append_images=images[1:], duration=delay, loop=loop)
    return path


def save_png(frame: Frame, path: str | os.PathLike, *, palette: str = "seed", guide: bool = False,
             zoom: int = 1) -> Path:
    """One frame as a PNG: exact palette image, or RGB with the layer guide beside it."""
    path = Path(path)
    image = with_guide(colorize(frame, palette, zoom), frame, zoom) if guide else indexed(frame, palette, zoom)
    image.save(path)
    return path


def drop_stale_frames(written: list[Path], stem: str = "frame") -> int:
    """Delete the <stem>_N.png beside `written`, numbered as wide as this run numbers them, with
    N past this run's last: an earlier, longer run into the same folder left them, and they would
    pass for this run's frames. Numbers up to the last are kept (a training timeline resumed from
    a checkpoint exports only the steps since, and the earlier ones are the same run's). A run
    that wrote nothing leaves the folder as it was. Returns how many went."""
    if not written:
        return 0
    digits = len(written[0].name) - len(stem) - len("_.png")  # zero-padded to this many at least
    pattern = re.compile(rf"{re.escape(stem)}_(\d{{{digits},}})\.png")
    last = max(int(pattern.fullmatch(path.name)[1]) for path in written)
    stale = [path for path in written[0].parent.glob(f"{glob.escape(stem)}_*.png")
             if (match := pattern.fullmatch(path.name)) and int(match[1]) > last]
    for path in stale:
        path.unlink()
    return len(stale)


class Progress:
    """A progress line on stderr every `every_s` seconds (default: 0.5 on a terminal, rewriting
    one line in place; 10 elsewhere, one line each, for logs). Nothing when `quiet`."""

    def __init__(self, every_s: float | None = None, quiet: bool = False):
        self.tty = sys.stderr.isatty()
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self.quiet, self.last, self.shown = quiet, time.monotonic(), False

    def update(self, line: Callable[[], str]) -> None:
        """Show line() if `every_s` has passed since the last one (line is built only then)."""
        now = time.monotonic()
        if self.quiet or now - self.last < self.every_s:
            return
        self.last, self.shown = now, True
        print("\r" + line() if self.tty else line(), end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        """End a line rewritten in place, so what follows starts on its own."""
        if self.tty and self.shown:
            print(file=sys.stderr, flush=True)


def rejected_note(stats: dict, last_error: str | None) -> str:
    """A subscriber's rejected messages and the last reason (a publisher of another wire
    version, say), for a summary line; "" if none."""
    return f"rejected {stats['rejected']} messages: {last_error}" if stats["rejected"] else ""


def default_zoom(width: int, height: int) -> int:
    """The integer zoom that makes a width x height picture at least 256 px wide (its caption
    readable), but no taller than 4096 px."""
    return max(1, min(-(-256 // width), 4096 // height))


def record_headless(endpoints: str | list[str], out_dir: str | os.PathLike, *, count: int | None = None,
                    duration: float | None = None, palette: str = "seed", gif: bool = True,
                    guide: bool = False, text: bool = True, gif_frames: int = 1000, fps: float = 15.0,
                    zoom: int | None = None, every_s: float | None = None, quiet: bool = False) -> dict:
    """Subscribe to `endpoints` and write each frame as out_dir/frame_NNNNNN.png, then
    out_dir/animation.gif (those of the last `gif_frames` frames that have the last frame's
    picture size, at `fps`, captioned when `text`), all zoomed by `zoom`
    (None: default_zoom of each frame, as `export` does). Progress goes to stderr every
    `every_s` seconds (see Progress).

    Stops after `count` frames, after `duration` seconds, or on Ctrl-C (at least one of count
    and duration is wise on a server). Needs no display. Returns {"dir", "pngs", "gif",
    "frames", "stats"} and prints one line saying where it wrote.
    """
    from .stream import Subscriber  # here: callers that only write animations need no sockets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    kept: collections.deque[Frame] = collections.deque(maxlen=gif_frames)
    start, first = time.monotonic(), None
    sub = Subscriber(endpoints, latest_only=False)
    progress = Progress(every_s, quiet)
    try:
        while (count is None or len(pngs) < count) and (duration is None or time.monotonic() - start < duration):
            frame = sub.recv(timeout=0.05)
            if frame is not None:
                pngs.append(save_png(frame, out / f"frame_{len(pngs):06d}.png", palette=palette, guide=guide,
                                     zoom=zoom or default_zoom(frame.width, frame.height)))
                kept.append(frame)
                first = first or frame
            progress.update(lambda: f"neuralflow: {len(pngs)} PNGs, {sub.stats['gaps']} dropped upstream, {sub.state}")
    except KeyboardInterrupt:  # Ctrl-C ends the recording; the animation is still written
        pass
    finally:
        progress.done()
        stats, last_error = sub.stats, sub.last_error
        sub.close()
    # one picture size per animation, the last frame's (padding all to the largest cost GBs)
    shown = [f for f in kept if (f.height, f.width) == (kept[-1].height, kept[-1].width)] if kept else []
    animation = (write_animation(shown, out / "animation.gif", palette=palette, fps=fps, text=text,
                                 zoom=zoom or default_zoom(shown[-1].width, shown[-1].height))
                 if gif and shown else None)
    stale = drop_stale_frames(pngs)
    if not quiet:
        source = ", ".join([endpoints] if isinstance(endpoints, str) else endpoints)
        notes = [f"joined at frame {first.seq} of its stream"] if first is not None and first.seq else []
        notes += [f"deleted {stale} frame PNGs an earlier, longer recording left there"] if stale else []
        notes += [f"{stats['gaps']} frames dropped upstream"] if stats["gaps"] else []
        notes += [f"the animation holds the last picture size's {len(shown)} of the last "
                  f"{len(kept)} frames"] if animation and len(shown) < len(kept) else []
        notes += [rejected] if (rejected := rejected_note(stats, last_error)) else []
        where = (f" and {animation}" if animation else "") + (f" ({'; '.join(notes)})" if notes else "")
        if pngs:
            print(f"neuralflow: wrote {len(pngs)} PNGs to {out}{where}", file=sys.stderr)
        else:
            print(f"neuralflow: no frames arrived on {source}, nothing written "
                  f"({rejected or 'is anything publishing there?'})", file=sys.stderr)
    return {"dir": out, "pngs": pngs, "gif": animation, "frames": len(pngs), "stats": stats}


EXPORT_MODES = ("plain", "side", "diff")


def export_timeline(frames: list[Frame], out_dir, *, mode: str = "plain", palette: str = "seed",
                    fps: float = 15.0, zoom: int | None = None, name: str = "timeline") -> dict:
    """Write one prompt's frames (step order) as out_dir/<name>_<step>.png, each with its step
    drawn under it, and out_dir/<name>.gif (looping, `fps`). mode "plain": the pictures;
    "side": step 0 left, step N right; "diff": difference to step 0 in the "diverging"
    palette (white unchanged, red up, blue down). zoom=None scales narrow pictures up to at
    least 256 px so the caption fits. Returns {"pngs": [...], "gif": path}."""
    if not frames:
        raise ValueError("no frames to export")
    first = frames[0]
    if mode == "plain":
        shown = list(frames)
    elif mode == "side":
        gap = np.full((first.height, 4), OVERFLOW, np.uint8)
        shown = [f.replace(pixels=np.concatenate([first.pixels, gap, f.pixels], axis=1)) for f in frames]
    elif mode == "diff":
        shown = [f.replace(pixels=difference(f, first)[0]) for f in frames]
        palette = "diverging"
    else:
        raise ValueError(f"mode must be one of {EXPORT_MODES}, got {mode!r}")

    template = {"plain": "step {}", "side": f"step {first.step} | step {{}}",
                "diff": f"step {{}} - step {first.step}"}[mode]

    def caption(frame: Frame) -> str:
        return f"{template.format(frame.step)}  {frame.meta.get('label', '')}".strip()

    if zoom is None:
        zoom = default_zoom(shown[0].width, shown[0].height)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = []
    for frame, image in zip(frames, animation_frames(shown, palette=palette, zoom=zoom, text=caption)):
        pngs.append(out / f"{name}_{frame.step:06d}.png")
        image.save(pngs[-1])
    drop_stale_frames(pngs, name)  # a longer earlier export of this name
    gif = write_animation(shown, out / f"{name}.gif", palette=palette, fps=fps, loop=0, zoom=zoom,
                          text=caption)
    return {"pngs": pngs, "gif": gif}
