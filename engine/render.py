"""The picture math: [layers, hidden] layer outputs -> one uint8 frame, on the states' device.

    from neuralflow.engine import render
    picture = render(states)            # states: [layers, hidden] tensor, any float dtype
    picture.pixels                      # uint8 [layers * ceil(hidden / 512), 512]

What the seed computes (DESIGN.md), and the modes we add:
  1. statistics lo, hi per layer:
       norm="seed"      one mean m and unbiased variance v over the whole array,
                        lo = m - 25 v, hi = m + 25 v (yes, the variance), same for every layer;
       norm="layer"     the same formula, per layer;
       norm="reference" lo, hi given by the caller (frozen, so drift stays visible).
     Non-finite entries are left out of the statistics (the seed never met them).
  2. t = (|x| - lo) / (hi - lo), not clamped (hi - lo is floored at the smallest normal float).
  3. quantize: t in [0, 1) -> floor(255 t) in 0..254; t < 0 -> 0; t >= 1, NaN, inf -> 255,
     the overflow mark that the seed draws black. Padding is 255 as well.
  4. tile: each layer's dims are cut into chunks of `width`; layout "bands" puts chunk k of
     every layer in band k (row = k * layers + layer), "layers" puts a layer's chunks in
     consecutive rows (row = layer * chunks + k).

`render` allocates its result; the engine's hooks call `render_into` with buffers they
allocated once. On CUDA the math runs as one torch.compile'd function (fixed shapes); on the
CPU as eager ops that skip the NaN/inf masking when a sum shows there is nothing to mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neuralflow.viewer.frame import LAYOUTS, NORMS, OVERFLOW, chunks_per_layer

SPREAD = 25.0  # lo/hi = mean -/+ SPREAD * variance, as the seed does


@dataclass
class Picture:
    """A rendered frame on the states' device and what explains it."""

    pixels: torch.Tensor  # uint8 [rows, width]
    lo: torch.Tensor  # float32 [layers]
    hi: torch.Tensor  # float32 [layers]
    layout: str
    norm: str


def square_width(layers: int, hidden: int) -> int:
    """The smallest power of two at least sqrt(layers x hidden): a picture between square and
    twice as wide as tall, 512 for Mistral 7B's 32 x 4096 (the seed's width), 32 for 4 x 256."""
    return 1 << max(0, math.ceil(math.log2(math.sqrt(layers * hidden))))


def frame_shape(layers: int, hidden: int, width: int = 512) -> tuple[int, int]:
    return layers * chunks_per_layer(hidden, width), width


def frame_buffers(layers: int, hidden: int, width: int, device) -> tuple[torch.Tensor, ...]:
    """Empty (pixels, lo, hi) for render_into: uint8 [rows, width], float32 [layers] twice."""
    pixels = torch.empty(frame_shape(layers, hidden, width), dtype=torch.uint8, device=device)
    lo = torch.empty(layers, dtype=torch.float32, device=device)
    return pixels, lo, torch.empty_like(lo)


def check_options(width: int, layout: str, norm: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")


def seed_stats(x: torch.Tensor, per_layer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """lo, hi ([layers] float32) from finite entries: mean -/+ 25 * unbiased variance.

    Written without boolean masks (isfinite/where are many times slower than arithmetic on the
    CPU): non-finite entries are zeroed, counted, and their share taken out of the sums.
    """
    x = x.float()
    dim = 1 if per_layer else None
    zeroed = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    bad = torch.nan_to_num(x - x, nan=1.0).sum(dim=dim)  # x - x is 0, or NaN where x is not finite
    n = x.shape[1] * (x.shape[0] if dim is None else 1) - bad
    mean = zeroed.sum(dim=dim) / n.clamp_min(1.0)
    centred = zeroed - (mean[:, None] if per_layer else mean)
    # each zeroed entry added (0 - mean)^2 to the sum: take it back out
    # (bad * mean * mean, not bad * mean.square(): with no bad entry it is 0 even where the
    # square overflows, as in _host_frame_math, which leaves this term out)
    var = (centred.square().sum(dim=dim) - bad * mean * mean) / (n - 1.0).clamp_min(1.0)
    lo, hi = mean - SPREAD * var, mean + SPREAD * var
    if not per_layer:
        lo, hi = lo.expand(x.shape[0]), hi.expand(x.shape[0])
    return lo, hi


def quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """uint8 [layers, hidden]: floor(255 t) for t in [0, 1), 0 below, 255 for t >= 1 and NaN/inf.

    In float32, t < 1 gives floor(255 t) <= 254, so clamping at 255 marks exactly t >= 1.
    """
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    t = (x.float().abs() - lo[:, None]) / span[:, None]
    q = torch.nan_to_num((t * 255.0).floor(), nan=float(OVERFLOW), posinf=float(OVERFLOW))
    return q.clamp(0.0, float(OVERFLOW)).to(torch.uint8)


def tile(q: torch.Tensor, width: int, layout: str) -> torch.Tensor:
    """[layers, hidden] uint8 -> [rows, width], padding the last chunk with the overflow mark."""
    layers, hidden = q.shape
    chunks = chunks_per_layer(hidden, width)
    q = torch.nn.functional.pad(q, (0, chunks * width - hidden), value=OVERFLOW)
    q = q.view(layers, chunks, width)
    if layout == "bands":
        q = q.transpose(0, 1)
    return q.reshape(layers * chunks, width)


def _frame_math(states, ref_lo, ref_hi, pixels, lo_out, hi_out, width: int, layout: str, norm: str):
    if norm == "reference":
        lo, hi = ref_lo, ref_hi
    else:
        lo, hi = seed_stats(states, per_layer=(norm == "layer"))
    pixels.copy_(tile(quantize(states, lo, hi), width, layout))
    lo_out.copy_(lo)
    hi_out.copy_(hi)


_TINY = torch.finfo(torch.float32).tiny


def _host_frame_math(states, ref_lo, ref_hi, pixels, lo_out, hi_out, width: int, layout: str,
                     norm: str):
    """_frame_math's picture, bit for bit, faster for CPU tensors: a CPU value is read back for
    free, so the NaN/inf masking runs only when a sum says there is a non-finite value, and the
    rest works in place, the seed statistics stay 0-d, and the picture is written straight into
    a view of `pixels` (no pad, reshape and copy) where no padding is needed. Against the version
    before those last two, 0.68-0.77x the time, warm or with cold caches as inside a layer hook
    (8 x 1024 and 32 x 4096, RESULTS.md "Eleventh session"). Device code cannot branch on data
    without a sync, so CUDA runs _frame_math."""
    x = states.float()
    if norm == "reference":  # a sum is finite only if every term is (or it overflows)
        lo, hi, finite = ref_lo, ref_hi, math.isfinite(float(x.sum()))
    else:
        per_layer = norm == "layer"
        dim = 1 if per_layer else None
        n = x.shape[1] if per_layer else x.numel()
        mean = x.sum(dim=dim) / n
        # seed_stats' formula with no entry left out: same float32 ops, same results
        var = (x - (mean[:, None] if per_layer else mean)).square_().sum(dim=dim) / max(n - 1, 1)
        spread = SPREAD * var
        # (norm="seed": 0-d, broadcast below as the expanded [layers] was; same float32 ops)
        lo, hi = mean - spread, mean + spread
        finite = True  # a NaN/inf entry makes its mean, so lo and hi, non-finite: checked below
    span = (hi - lo).clamp_min(_TINY)
    # non-finite statistics, whatever the cause (states, an overflow): the masked math
    if not (finite and math.isfinite(float(span.sum()))):
        _frame_math(states, ref_lo, ref_hi, pixels, lo_out, hi_out, width, layout, norm)
        return
    row_lo, row_span = (lo[:, None], span[:, None]) if lo.dim() else (lo, span)
    # finite x, lo and span: t is finite or +inf, never NaN; after the clamp, the conversion
    # to uint8 truncates, which is quantize's floor on 0..255
    t = x.abs().sub_(row_lo).div_(row_span).mul_(255.0).clamp_(0.0, float(OVERFLOW))
    _copy_tiled(pixels, t, width, layout)
    lo_out.copy_(lo)
    hi_out.copy_(hi)


def _copy_tiled(pixels: torch.Tensor, t: torch.Tensor, width: int, layout: str) -> None:
    """pixels <- tile(t, width, layout), converted: one copy into a view of pixels when no
    padding is needed (hidden a multiple of width), instead of a pad, a reshape and a copy."""
    layers, hidden = t.shape
    chunks = chunks_per_layer(hidden, width)
    if chunks * width != hidden or not pixels.is_contiguous():
        pixels.copy_(tile(t, width, layout))
    elif layout == "bands":  # row = chunk * layers + layer
        pixels.view(chunks, layers, width).copy_(t.view(layers, chunks, width).transpose(0, 1))
    else:  # row = layer * chunks + chunk: the states' own order
        pixels.view(layers, hidden).copy_(t)


_fused = None


def fused_by_default(device: torch.device) -> bool:
    """Whether render_into(fuse=None) compiles the math on `device`: on CUDA only, where one
    compiled function replaces dozens of kernel launches."""
    return device.type == "cuda"


def render_into(states, pixels, lo_out, hi_out, *, width=512, layout="bands", norm="seed",
                ref_lo=None, ref_hi=None, fuse=None) -> None:
    """Write the frame of `states` into preallocated `pixels`, `lo_out`, `hi_out` (no device
    sync).

    fuse=None compiles the math into one function on CUDA (inductor made 8 kernels of it on an
    H200) and runs it eagerly elsewhere (`_host_frame_math` on the CPU). For eager callers on
    CUDA, `cuda_graph` turns a call with fixed buffers into one replayable launch.
    """
    global _fused
    if fuse is None:
        fuse = fused_by_default(states.device)
    # (a data-dependent branch would break a compiled caller's graph: the masked math inlines)
    host = states.device.type == "cpu" and not torch.compiler.is_compiling()
    fn = _host_frame_math if host else _frame_math
    if fuse:
        if _fused is None:
            _fused = torch.compile(_frame_math, dynamic=False, fullgraph=True)
        fn = _fused
    with torch.no_grad():  # whatever the caller's grad mode: one compiled variant, not two
        fn(states, ref_lo, ref_hi, pixels, lo_out, hi_out, width, layout, norm)


def cuda_graph(fn, device) -> "torch.cuda.CUDAGraph":
    """The kernels one call of fn() launches, captured as a CUDA graph: graph.replay() runs them
    again, on the same buffers, in one launch. On an H200 the compiled frame math cost 263 us of
    host time per call for 9.8 us of device time, and host time is what eager decoding is short
    of. fn must have run once already (compiled, allocator warm) and must not sync."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA work on other threads (a delivery thread, say) does not break the capture
    with torch.cuda.device(device), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return graph


def reference_stats(reference, layers: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """lo, hi [layers] float32 on `device` from a Picture/Frame (has .lo/.hi) or a (lo, hi) pair."""
    if reference is None:
        raise ValueError("norm='reference' needs reference= (a Picture, a Frame, or a (lo, hi) pair)")
    lo, hi = (reference.lo, reference.hi) if hasattr(reference, "lo") else reference
    out = []
    for v in (lo, hi):
        t = torch.as_tensor(v, dtype=torch.float32).to(device).reshape(-1)
        if t.numel() not in (1, layers):
            raise ValueError(f"reference lo/hi must hold 1 or {layers} values, got {t.numel()}")
        out.append(t.expand(layers).contiguous())
    return out[0], out[1]


def render(states: torch.Tensor, *, width: int = 512, layout: str = "bands", norm: str = "seed",
           reference=None) -> Picture:
    """Render [layers, hidden] states into a Picture on the same device (see module docstring)."""
    check_options(width, layout, norm)
    if states.dim() != 2 or states.shape[0] < 1 or states.shape[1] < 1:
        raise ValueError(f"states must be [layers, hidden], got shape {tuple(states.shape)}")
    layers, hidden = states.shape
    ref_lo = ref_hi = None
    if norm == "reference":
        ref_lo, ref_hi = reference_stats(reference, layers, states.device)
    pixels, lo, hi = frame_buffers(layers, hidden, width, states.device)
    render_into(states, pixels, lo, hi, width=width, layout=layout, norm=norm,
                ref_lo=ref_lo, ref_hi=ref_hi, fuse=False)
    return Picture(pixels, lo, hi, layout, norm)
