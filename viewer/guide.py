"""The layer guide: which rows of a frame are which layer and which band of dims (torch-free).

Like the original's guide figure, drawn with Pillow at the same height (and zoom) as the
picture, so it can sit right beside it row for row: in the window, and in PNG exports "with
guide". Left column: a stripe with one shade per layer (dark = layer 0, light = last layer),
right: one box per band of dims (layout "bands") or per layer (layout "layers"), labelled.

Run `python -m neuralflow.viewer.guide OUT.png [layers hidden width layout]` to draw one.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .frame import Frame, chunks_per_layer, row_origin

BACKGROUND = (24, 24, 28)
BOXES = ((46, 52, 64), (59, 66, 82))
TEXT = (236, 239, 244)
STRIPE = 10  # width of the per-layer shade stripe, px
GAP = 4  # px between picture and guide in exports


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _labels(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], lines: list[str], size: int):
    x0, y0, x1, y1 = box
    fit = [line for i, line in enumerate(lines) if (i + 1) * (size + 2) <= (y1 - y0)]
    for i, line in enumerate(fit):
        draw.text((x0 + 4, y0 + 1 + i * (size + 2)), line, fill=TEXT, font=_font(size))


@functools.lru_cache(maxsize=16)
def guide_image(layers: int, hidden: int, width: int, layout: str = "bands", zoom: int = 1,
                guide_width: int = 150) -> Image.Image:
    """RGB guide image of size (guide_width, height*zoom) for a frame's geometry.

    Cached: the window asks for it on every geometry/zoom change only. Treat as read-only.
    """
    chunks = chunks_per_layer(hidden, width)
    height = layers * chunks
    image = Image.new("RGB", (guide_width, height * zoom), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # crisp, no anti-aliasing: exact colours at any zoom, small GIF palettes

    layer_of_row, _ = row_origin(np.arange(height), layers, chunks, layout)
    shade = (40 + 200 * layer_of_row / max(layers - 1, 1)).astype(np.uint8)
    stripe = np.repeat(np.repeat(shade[:, None], zoom, axis=0), STRIPE, axis=1)
    image.paste(Image.fromarray(np.stack([stripe] * 3, axis=-1), "RGB"), (0, 0))

    boxes = chunks if layout == "bands" else layers
    rows_per_box = layers if layout == "bands" else chunks
    box_h = rows_per_box * zoom
    size = max(8, min(12, box_h // 2 - 2)) if box_h >= 20 else max(6, min(12, box_h - 2))
    for k in range(boxes):
        y0, y1 = k * box_h, (k + 1) * box_h
        draw.rectangle((STRIPE + 1, y0, guide_width - 1, y1 - 1), fill=BOXES[k % 2])
        if layout == "bands":
            lo, hi = k * width, min((k + 1) * width, hidden) - 1
            lines = [f"dims {lo}-{hi}", f"layers 0-{layers - 1}"]
        else:
            lines = [f"layer {k}", f"dims 0-{hidden - 1} in {chunks} rows"]
        if box_h >= size + 2:
            _labels(draw, (STRIPE + 1, y0, guide_width, y1), lines, size)
    return image


def guide_for(frame: Frame, zoom: int = 1, guide_width: int = 150) -> Image.Image:
    return guide_image(frame.layers, frame.hidden, frame.width, frame.layout, zoom, guide_width)


def with_guide(picture: Image.Image, frame: Frame, zoom: int = 1) -> Image.Image:
    """The picture (already coloured at `zoom`) with the guide to its right."""
    guide = guide_for(frame, zoom)
    out = Image.new("RGB", (picture.width + GAP + guide.width, picture.height), BACKGROUND)
    out.paste(picture, (0, 0))
    out.paste(guide, (picture.width + GAP, 0))
    return out


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "guide.png"
    layers, hidden, width = (int(v) for v in (sys.argv[2:5] or (32, 4096, 512)))
    layout = sys.argv[5] if len(sys.argv) > 5 else "bands"
    guide_image(layers, hidden, width, layout, zoom=2).save(out)
    print(f"wrote {out}")
