"""Palettes and colouring: uint8 frame -> RGB picture, plus frame differences (torch-free).

A palette is a 256-entry uint8 RGB lookup table; colouring a frame is one table lookup,
`lut[pixels]`, done by Pillow's palette conversion in C: never a per-pixel Python loop.

Palettes (`PALETTES`; the window's `p` cycles through all but "diverging", which is for differences):
- "seed": the original's colour wheel. Pixel value q in 0..254 stands for t in [q/255, (q+1)/255);
  we colour it with the hue of the interval's lower edge, t = q/255, on a full-saturation,
  full-value HSV wheel (0 red, 1/6 yellow, 1/3 green, 1/2 cyan, 2/3 blue, 5/6 magenta), channels
  truncated to uint8 (x*255 cast). q = 255 (overflow: t >= 1, padding, NaN) is black.
- "viridis", "magma", "gray": perceptual ramps over q = 0..254, linearly interpolated between
  anchor colours defined below (sampled at evenly spaced points of the published maps). Their
  overflow colour (q = 255) is one the ramp never uses, so padding and outliers stay visible:
  white for viridis, cyan for magma and gray.
- "diverging": for difference pictures (see `difference`): 128 is white (no change), lower
  values shade to blue (value went down), higher to red (went up).

Run `python -m neuralflow.viewer.palette OUT.png` to write a strip of every palette.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from PIL import Image

from .frame import OVERFLOW, Frame, chunks_per_layer, row_origin

# Anchors at evenly spaced points 0, 1/(n-1), ..., 1 of each ramp.
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e",
            "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
_MAGMA = ["#000004", "#180f3d", "#440f76", "#721f81", "#9e2f7f",
          "#cd4071", "#f1605d", "#fd9668", "#feca8d", "#fcfdbf"]
_GRAY = ["#000000", "#ffffff"]
_DIVERGING = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#ffffff",
              "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def ramp(anchors: list[str], n: int) -> np.ndarray:
    """n RGB colours (uint8 [n, 3]) interpolated linearly between evenly spaced anchors."""
    a = np.array([_rgb(c) for c in anchors], np.float64)
    where = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    out = np.stack([np.interp(t, where, a[:, c]) for c in range(3)], axis=1)
    return np.rint(out).astype(np.uint8)


def seed_lut() -> np.ndarray:
    """The original's HSV hue wheel, hue = q/255, as a [256, 3] uint8 table; 255 is black."""
    h6 = np.arange(255, dtype=np.float64) / 255.0 * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    one, zero = np.ones_like(f), np.zeros_like(f)
    falling = 1.0 - f
    rising = 1.0 - (1.0 - f)  # written as HSV conversions usually do, so truncation agrees bit for bit
    # (r, g, b) for each of the six sectors of the wheel.
    table = np.stack([
        np.stack([one, rising, zero], 1), np.stack([falling, one, zero], 1),
        np.stack([zero, one, rising], 1), np.stack([zero, falling, one], 1),
        np.stack([rising, zero, one], 1), np.stack([one, zero, falling], 1),
    ])
    rgb = table[sector, np.arange(255)]
    lut = np.zeros((256, 3), np.uint8)
    lut[:255] = (rgb * 255.0).astype(np.uint8)  # truncation, as the original
    return lut


def _with_overflow(ramp_lut: np.ndarray, colour: str) -> np.ndarray:
    lut = np.empty((256, 3), np.uint8)
    lut[:255] = ramp_lut
    lut[OVERFLOW] = _rgb(colour)
    return lut


PALETTES: dict[str, np.ndarray] = {
    "seed": seed_lut(),
    "viridis": _with_overflow(ramp(_VIRIDIS, 255), "#ffffff"),
    "magma": _with_overflow(ramp(_MAGMA, 255), "#00ffff"),
    "gray": _with_overflow(ramp(_GRAY, 255), "#00ffff"),
    # blue half 0..128 and red half 128..255 meet at 128, exactly white
    "diverging": np.concatenate([ramp(_DIVERGING[:6], 129), ramp(_DIVERGING[5:], 128)[1:]]),
}
for _lut in PALETTES.values():
    _lut.setflags(write=False)


def lut(palette: str | np.ndarray) -> np.ndarray:
    """The [256, 3] uint8 table for a palette name (or a table, passed through)."""
    if isinstance(palette, np.ndarray):
        if palette.shape != (256, 3) or palette.dtype != np.uint8:
            raise ValueError("a palette table must be uint8 [256, 3]")
        return palette
    try:
        return PALETTES[palette]
    except KeyError:
        raise ValueError(f"unknown palette {palette!r}; choose from {', '.join(PALETTES)}") from None


def next_palette(name: str, cycle: tuple[str, ...] = ("seed", "viridis", "magma", "gray")) -> str:
    """The palette after `name` in the window's cycle."""
    return cycle[(cycle.index(name) + 1) % len(cycle)] if name in cycle else cycle[0]


def _pixels(frame_or_pixels: Frame | np.ndarray) -> np.ndarray:
    pixels = frame_or_pixels.pixels if isinstance(frame_or_pixels, Frame) else frame_or_pixels
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected uint8 [height, width] pixels, got {pixels.dtype} {pixels.shape}")
    return pixels


def colorize_array(frame_or_pixels: Frame | np.ndarray, palette: str | np.ndarray = "seed",
                   zoom: int = 1) -> np.ndarray:
    """uint8 [h*zoom, w*zoom, 3] RGB array; zoom is an integer nearest-neighbour scale."""
    return np.asarray(colorize(frame_or_pixels, palette, zoom))


def indexed(frame_or_pixels: Frame | np.ndarray, palette: str | np.ndarray = "seed",
            zoom: int = 1) -> Image.Image:
    """A palette-mode ("P") Pillow image of the frame: exact colours for GIF/APNG/PNG."""
    pixels = np.ascontiguousarray(_pixels(frame_or_pixels))
    height, width = pixels.shape
    image = Image.frombuffer("P", (width, height), pixels.tobytes(), "raw", "P", 0, 1)
    image.putpalette(lut(palette).tobytes(), "RGB")
    if zoom > 1:
        image = image.resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
    return image


def colorize(frame_or_pixels: Frame | np.ndarray, palette: str | np.ndarray = "seed",
             zoom: int = 1) -> Image.Image:
    """An RGB Pillow image of a frame (or uint8 [h, w] pixels) in the given palette.

    The lookup runs inside Pillow's palette conversion (C, about 0.1 ms for 256x512); `zoom`
    scales by an integer factor with nearest neighbour (every pixel becomes a zoom x zoom block).
    """
    return indexed(frame_or_pixels, palette, zoom).convert("RGB")


# ---- differences ------------------------------------------------------------------------------

def same_geometry(a: Frame, b: Frame) -> bool:
    return (a.pixels.shape == b.pixels.shape and a.layers == b.layers and a.hidden == b.hidden
            and a.layout == b.layout)


@functools.lru_cache(maxsize=8)
def _rows(height: int, width: int, layers: int, hidden: int, layout: str):
    """Per geometry, cached: layer of each row, mask of real (non-padding) pixels, pixels per layer."""
    layer, chunk = row_origin(np.arange(height), layers, chunks_per_layer(hidden, width), layout)
    real = chunk[:, None] * width + np.arange(width)[None, :] < hidden
    counts = np.bincount(layer, weights=real.sum(axis=1), minlength=layers)
    for array in (layer, real, counts):
        array.setflags(write=False)
    return layer, real, counts


def layer_map(frame: Frame) -> np.ndarray:
    """int64 [h, w]: the layer of every pixel, -1 on padding (dims past `hidden`)."""
    layer, real, _ = _rows(frame.height, frame.width, frame.layers, frame.hidden, frame.layout)
    return np.where(real, layer[:, None], -1)


def difference(frame: Frame, reference: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Signed difference picture and per-layer drift of `frame` against `reference`.

    Both work on the quantized values q (0..255, overflow counted as 255), i.e. on what the
    picture shows, so layers of very different magnitude compare on one scale; dequantized
    values would let the largest layers dominate and change meaning when lo/hi differ.
    - picture: uint8 [h, w], 128 + (q - q_ref) clipped to 0..255, for the "diverging" palette
      (128 white = unchanged, lower blue, higher red; one step per quantized level, so
      differences beyond -128..+127 levels saturate).
    - drift: float32 [layers], mean |q - q_ref| over each layer's real dims (padding excluded),
      in quantized levels (divide by 255 for a fraction of the range).
    Raises ValueError when the geometries differ.
    """
    if not same_geometry(frame, reference):
        raise ValueError("difference needs two frames of the same geometry")
    d = frame.pixels.astype(np.int16) - reference.pixels.astype(np.int16)
    picture = np.clip(d + 128, 0, 255).astype(np.uint8)
    layer, real, counts = _rows(frame.height, frame.width, frame.layers, frame.hidden, frame.layout)
    row_sums = np.where(real, np.abs(d), 0).sum(axis=1)
    drift = np.bincount(layer, weights=row_sums, minlength=frame.layers) / np.maximum(counts, 1)
    return picture, drift.astype(np.float32)


def strip(height: int = 24) -> Image.Image:
    """Every palette as a horizontal bar of its 256 entries, stacked (for docs and checks)."""
    rows = [np.repeat(lut(name)[None, :, :], height, axis=0) for name in PALETTES]
    return Image.fromarray(np.concatenate(rows, axis=0), "RGB")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "palettes.png"
    strip().resize((512, 24 * len(PALETTES)), Image.Resampling.NEAREST).save(out)
    print(f"wrote {out}: {', '.join(PALETTES)}")
