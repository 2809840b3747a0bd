"""The frame math as the alternatives would write it, to measure neuralflow against.

    from neuralflow.benchmarks.baselines import numpy_frame, eager_frame
    pixels = numpy_frame(states_np)      # host numpy, as an offline script renders each step
    pixels = eager_frame(states_tensor)  # plain eager torch on the states' device, one op at a time

Both compute the seed picture of DESIGN.md in the quantized form the engine ships (uint8 q in
0..254 for t in [0, 1), 255 for t >= 1, NaN and padding; the viewer colours it): one mean m and
unbiased variance v over the whole [layers, hidden] array, lo/hi = m -/+ 25 v,
t = (|x| - lo) / (hi - lo), chunks of `width` dims tiled in bands (row = chunk * layers + layer).
They leave out what the engine adds (non-finite entries excluded from the statistics, other
norms and layouts), so on finite states they agree with `neuralflow.engine.render` up to float
rounding of the statistics. Written from the description, the straightforward way.
"""

from __future__ import annotations

import numpy as np
import torch

SPREAD = 25.0
OVERFLOW = 255


def numpy_frame(states: np.ndarray, width: int = 512) -> np.ndarray:
    """uint8 [layers * chunks, width] seed picture of float [layers, hidden] states, in numpy."""
    x = np.asarray(states, dtype=np.float32)
    layers, hidden = x.shape
    mean, var = x.mean(), x.var(ddof=1)
    lo, hi = mean - SPREAD * var, mean + SPREAD * var
    t = (np.abs(x) - lo) / (hi - lo)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.floor(t * 255.0), 0, OVERFLOW - 1)
        q[(t >= 1.0) | np.isnan(t)] = OVERFLOW
    chunks = -(-hidden // width)
    padded = np.full((layers, chunks * width), OVERFLOW, dtype=np.uint8)
    padded[:, :hidden] = q
    return padded.reshape(layers, chunks, width).transpose(1, 0, 2).reshape(layers * chunks, width)


def eager_frame(states: torch.Tensor, width: int = 512) -> torch.Tensor:
    """The same picture in plain eager torch on the states' device (allocates, one kernel per op)."""
    x = states.float()
    layers, hidden = x.shape
    mean, var = x.mean(), x.var()
    lo, hi = mean - SPREAD * var, mean + SPREAD * var
    t = (x.abs() - lo) / (hi - lo)
    q = (t * 255.0).floor().clamp(0, OVERFLOW - 1)
    q = torch.where((t >= 1.0) | t.isnan(), OVERFLOW, q).to(torch.uint8)
    chunks = -(-hidden // width)
    q = torch.nn.functional.pad(q, (0, chunks * width - hidden), value=OVERFLOW)
    return q.view(layers, chunks, width).transpose(0, 1).reshape(layers * chunks, width)
