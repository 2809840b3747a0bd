"""One captured picture and what a viewer needs to explain it (torch-free).

The engine produces `Frame`s, the wire carries them, the viewer draws them. A frame's
pixels are the quantized picture: value q in 1..254 means the layer output's magnitude
|x| fell in [lo + q/255*(hi-lo), lo + (q+1)/255*(hi-lo)) (lo and hi of that pixel's layer), and
q = 0 means |x| < lo + (hi-lo)/255 (everything below lo included);
255 is the overflow mark (|x| >= hi, padding, NaN or inf), drawn black by the seed palette.

Geometry (see DESIGN.md): each layer's `hidden` dims are cut into `chunks` pieces of
`width` dims. Layout "bands" puts chunk k of every layer in band k (row = k*layers + layer);
layout "layers" puts a layer's chunks in consecutive rows (row = layer*chunks + k).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

LAYOUTS = ("bands", "layers")
NORMS = ("seed", "layer", "reference")
OVERFLOW = 255


def chunks_per_layer(hidden: int, width: int) -> int:
    """How many rows of `width` pixels one layer's `hidden` dims take."""
    return -(-hidden // width)


def row_origin(rows, layers: int, chunks: int, layout: str):
    """(layer, chunk) shown on pixel row(s) `rows`: ints or numpy arrays (see the docstring)."""
    if layout == "bands":
        return rows % layers, rows // layers
    return rows // chunks, rows % chunks


@dataclass
class Frame:
    pixels: np.ndarray  # uint8 [height, width]
    layers: int
    hidden: int
    layout: str = "bands"
    norm: str = "seed"
    lo: np.ndarray = None  # float32 [layers]
    hi: np.ndarray = None  # float32 [layers]
    step: int = 0  # 0 = prefill, then one per generated token
    token_id: int = -1  # the input token of this forward (-1 unknown)
    position: int = 0  # sequence position of that token
    row: int = 0  # batch row captured
    rank: int = 0  # distributed rank (or device group) that captured it
    time_ns: int = 0  # capture time, time.time_ns() on the engine's host
    session: int = 0  # random per engine; a new one means the publisher restarted
    seq: int = 0  # per-session sequence number; gaps are dropped frames
    meta: dict = field(default_factory=dict)  # small str -> str: token text, model, label

    def __post_init__(self):
        if self.lo is None:
            self.lo = np.zeros(self.layers, np.float32)
        if self.hi is None:
            self.hi = np.ones(self.layers, np.float32)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def chunks(self) -> int:
        return chunks_per_layer(self.hidden, self.width)

    def locate(self, y: int, x: int) -> tuple[int, int | None]:
        """(layer, dim) shown at pixel row y, column x; dim is None on padding."""
        layer, chunk = row_origin(y, self.layers, self.chunks, self.layout)
        dim = chunk * self.width + x
        return layer, (dim if dim < self.hidden else None)

    def value_range(self, y: int, x: int) -> tuple[float, float] | None:
        """The interval of |x| that pixel (y, x) stands for; None for the overflow mark."""
        q = int(self.pixels[y, x])
        if q == OVERFLOW:
            return None
        layer, _ = self.locate(y, x)
        lo, hi = float(self.lo[layer]), float(self.hi[layer])
        step = (hi - lo) / 255.0
        # |x| >= 0, and everything below lo quantizes to 0 as well
        return (0.0 if q == 0 else max(0.0, lo + q * step)), lo + (q + 1) * step

    def replace(self, **changes) -> "Frame":
        return dataclasses.replace(self, **changes)
