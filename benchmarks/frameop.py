"""The frame operation alone: states [layers, hidden] -> uint8 picture, ours against plain eager torch.

    from neuralflow.benchmarks.frameop import measure_frame_op, profile_frame_op
    measure_frame_op((32, 4096), device="cpu")      # Mistral-7B shape; us per frame, interleaved
    profile_frame_op((32, 4096), device="cuda")     # the kernels one render_into call launches

Implementations timed:
  neuralflow  engine.render.render_into with buffers allocated once (what the engine's hook
              calls): eager on CPU, one torch.compile'd function on CUDA;
  eager       baselines.eager_frame, the same math one eager op at a time (allocates);
  neuralflow_compiled (CPU only, compiled=True): render_into(fuse=True), the CUDA path's compiled
              function run on the CPU; its compile time is reported apart.
  neuralflow_graph (CUDA only): that compiled call captured once as a CUDA graph and replayed,
              as the Engine does in eager forwards.
On CPU a round times `iters` back-to-back calls of each implementation (wall time); on CUDA
the same loop is bracketed by CUDA events (device timeline, so launch gaps count when the
host cannot keep up). Rounds alternate implementations; medians over rounds are reported.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from neuralflow.benchmarks.baselines import eager_frame
from neuralflow.benchmarks.overhead import spread
from neuralflow.engine.render import cuda_graph, frame_buffers, render_into


def _implementations(states: torch.Tensor, width: int, compiled: bool) -> dict:
    pixels, lo, hi = frame_buffers(*states.shape, width, states.device)
    impls = {
        "neuralflow": lambda: render_into(states, pixels, lo, hi, width=width),
        "eager": lambda: eager_frame(states, width),
    }
    if compiled and not states.is_cuda:
        impls["neuralflow_compiled"] = lambda: render_into(states, pixels, lo, hi, width=width, fuse=True)
    if states.is_cuda:  # what the Engine's eager forwards run: the compiled call as a CUDA graph
        impls["neuralflow"]()  # compile and warm before capturing
        torch.cuda.synchronize(states.device)
        impls["neuralflow_graph"] = cuda_graph(impls["neuralflow"], states.device).replay
    return impls


def _timer(device: torch.device):
    """fn, iters -> seconds per call: wall time on CPU, CUDA-event time on CUDA."""
    if device.type != "cuda":
        def wall(fn, iters):
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - start) / iters
        return wall

    def events(fn, iters):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()  # sync point: end of a timed block
        return begin.elapsed_time(end) / 1e3 / iters
    return events


def measure_frame_op(shape=(32, 4096), device="cpu", *, iters: int = 50, rounds: int = 15,
                     width: int = 512, compiled: bool = False, progress=None) -> dict:
    """Microseconds per frame for each implementation, and ours / eager per round."""
    device = torch.device(device)
    states = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    impls = _implementations(states, width, compiled)
    timer = _timer(device)
    first_call_s, errors = {}, {}
    for name, fn in list(impls.items()):  # warm-up; the first call compiles where there is compiling
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # e.g. no C++ compiler for the compiled CPU variant
            if name != "neuralflow_compiled":
                raise
            errors[name] = repr(err)[:500]
            del impls[name]
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_call_s[name] = time.perf_counter() - start
        timer(fn, max(1, iters // 5))
    per_call = {name: [] for name in impls}
    for r in range(rounds):
        for name, fn in impls.items():
            per_call[name].append(timer(fn, iters))
        if progress and (r + 1) % max(1, rounds // 3) == 0:
            now = ", ".join(f"{k} {1e6 * v[-1]:.0f}" for k, v in per_call.items())
            progress(f"  frame op round {r + 1}/{rounds}: {now} us")
    ours = render_out(states, width)
    result = {
        "shape": list(shape), "device": str(device), "width": width, "iters": iters, "rounds": rounds,
        "timing": "cuda events" if device.type == "cuda" else "wall clock",
        "us_per_frame": {k: spread([1e6 * t for t in v]) for k, v in per_call.items()},
        "ratio_to_eager": {k: spread([a / b for a, b in zip(v, per_call["eager"])])
                           for k, v in per_call.items() if k != "eager"},
        "first_call_s": first_call_s,
        "errors": errors,
        "pixels_equal_to_eager": bool(torch.equal(ours, eager_frame(states, width))),
    }
    return result


def render_out(states: torch.Tensor, width: int) -> torch.Tensor:
    """render_into's pixels for `states` (the default path for its device)."""
    pixels, lo, hi = frame_buffers(*states.shape, width, states.device)
    render_into(states, pixels, lo, hi, width=width)
    return pixels


def profile_frame_op(shape=(32, 4096), device="cpu", *, width: int = 512, trace_path=None) -> dict:
    """What one call of each implementation launches: kernels with device time on CUDA, ops on CPU."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    states = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    impls = _implementations(states, width, compiled=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {}
    for name, fn in impls.items():
        for _ in range(3):
            fn()  # warm (compiled already, allocator primed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if trace_path:
            prof.export_chrome_trace(str(trace_path).replace(".json", f"_{name}.json"))
        out[name] = _launched(prof, device)
    return out


def _launched(prof, device: torch.device) -> dict:
    """Kernels (CUDA) or top-level aten ops (CPU) in a profile, with their times in us."""
    rows = []
    for e in prof.events():
        if device.type == "cuda":
            if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            t = getattr(e, "device_time", None)
            t = getattr(e, "cuda_time", 0.0) if t is None else t
        else:
            if e.cpu_parent is not None or not e.name.startswith("aten::"):
                continue
            t = e.cpu_time_total
        rows.append({"name": e.name[:120], "us": float(t)})
    kind = "kernels" if device.type == "cuda" else "top-level aten ops"
    return {"kind": kind, "count": len(rows), "total_us": float(np.sum([r["us"] for r in rows])),
            "launched": rows}
