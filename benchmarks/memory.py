"""Memory added by capture over many generated tokens, sampled along the way: does it stay flat?

    from neuralflow.benchmarks.memory import measure_memory
    result = measure_memory(model, ids, tokens=1000, chunk=100)
    result["neuralflow"]["rss_slope_mib_per_1k_tokens"], result["flat"]

For "none" (baseline_tokens) and then "neuralflow" (an Engine publishing to a live subscriber
process, attached once for the whole run), `tokens` are generated as tokens / chunk greedy generate calls of
`chunk` new tokens, so the KV cache is freed between calls and the baseline is flat; after one
warm-up call, host RSS (psutil) and on CUDA torch.cuda.memory_allocated are sampled after every
call. The slope is a least-squares fit over the samples, in MiB per 1,000 tokens. "Added" is
the neuralflow run's last sample minus the none run's last sample (RSS), and on CUDA the peak
allocated (torch.cuda.max_memory_allocated, reset before each run) minus the none run's peak.
"flat" means the neuralflow run's RSS slope exceeds the none run's (where that grew) by less
than FLAT_MIB_PER_1K (what the process does anyway, e.g. the allocator settling, is not
capture's) and on CUDA that the allocated bytes never changed between samples. At 0.5 MiB per
1k tokens a leak of 1 KiB per frame (slope about +1.5) is caught, where the old absolute 2 MiB
rule let it pass. Without a leak the difference measured +0.03 on the tiny model and -0.3 to
+0.3 on the CI model: RSS grows in ~0.1 MiB heap steps, and one step in the suite's 300-token
none run moves its slope by ~0.5.
"""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext

import numpy as np
import torch

from neuralflow.benchmarks.listener import Listener, available, free_endpoint
from neuralflow.benchmarks.models import greedy_kwargs
from neuralflow.engine import Engine

FLAT_MIB_PER_1K = 0.5  # RSS slope over the none run's below this counts as flat (allocator noise)
MIB = 2 ** 20


def _rss() -> int:
    """Resident set size in bytes (psutil; /proc/self/statm where psutil is missing)."""
    try:
        import psutil
    except ImportError:
        import os
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


def _slope_per_1k(tokens: list[int], values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(tokens, float), np.asarray(values, float), 1)[0] * 1000.0)


def _run(model, ids, tokens: int, chunk: int, capture: bool, width: int, progress) -> dict:
    cuda = ids.device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    publish = capture and available()
    listening = Listener(free_endpoint()) if publish else nullcontext()
    engine = None
    before = _rss()
    done, samples_tokens, rss, allocated = 0, [], [], []
    with listening as listener:
        if capture:
            if publish:
                engine = Engine(model, publish=listener.endpoint, width=width).__enter__()
                engine.publisher.wait_for_subscribers(1, timeout=10.0)
            else:  # no pyzmq: frames end at a no-op sink
                engine = Engine(model, on_frame=lambda frame: None, width=width).__enter__()
        try:
            model.generate(ids, **greedy_kwargs(chunk))  # warm-up, not sampled
            while done < tokens:
                model.generate(ids, **greedy_kwargs(chunk))
                done += chunk
                if cuda:
                    torch.cuda.synchronize()
                    allocated.append(torch.cuda.memory_allocated())
                samples_tokens.append(done)
                rss.append(_rss())
                if progress and len(rss) % 5 == 0:
                    progress(f"  memory {'neuralflow' if capture else 'none'}: {done}/{tokens} tokens, "
                             f"RSS {rss[-1] / MIB:.1f} MiB")
        finally:
            if engine is not None:
                engine.__exit__(None, None, None)
    out = {
        "tokens": samples_tokens,
        "rss_mib": [r / MIB for r in rss],
        "rss_before_mib": before / MIB,
        "rss_slope_mib_per_1k_tokens": _slope_per_1k(samples_tokens, [r / MIB for r in rss]),
    }
    if cuda:
        out["cuda_allocated_mib"] = [a / MIB for a in allocated]
        out["cuda_slope_mib_per_1k_tokens"] = _slope_per_1k(samples_tokens, [a / MIB for a in allocated])
        out["cuda_allocated_changes"] = len(set(allocated)) - 1
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    if capture:
        out["engine"] = {k: v for k, v in engine.stats.items() if not isinstance(v, dict)}
        out["subscriber"] = listener.stats if publish else {"error": "pyzmq missing: no-op sink"}
    return out


def measure_memory(model: torch.nn.Module, prompt_ids: torch.Tensor, tokens: int = 1000,
                   chunk: int = 100, width: int = 512, baseline_tokens: int | None = None,
                   progress=None) -> dict:
    """Sample host (and CUDA) memory over `tokens` generated tokens without and with capture.

    baseline_tokens: tokens for the "none" run (default `tokens`; fewer saves time)."""
    started = time.monotonic()
    none = _run(model, prompt_ids, baseline_tokens or tokens, chunk, False, width, progress)
    ours = _run(model, prompt_ids, tokens, chunk, True, width, progress)
    # over the none run's growth, if any: a baseline that gave memory back (a heap step in its
    # short run) must not make capture look like it grows
    slope = ours["rss_slope_mib_per_1k_tokens"] - max(none["rss_slope_mib_per_1k_tokens"], 0.0)
    flat = slope < FLAT_MIB_PER_1K  # one-sided: memory given back is no leak
    result = {"tokens": tokens, "baseline_tokens": baseline_tokens or tokens, "chunk": chunk, "none": none, "neuralflow": ours,
              "rss_added_mib": ours["rss_mib"][-1] - none["rss_mib"][-1],
              "rss_slope_over_none_mib_per_1k_tokens": slope,
              "flat_threshold_mib_per_1k_tokens": FLAT_MIB_PER_1K}
    if "cuda_peak_mib" in ours:
        result["cuda_peak_added_mib"] = ours["cuda_peak_mib"] - none["cuda_peak_mib"]
        flat = flat and ours["cuda_allocated_changes"] == 0
    result["flat"] = bool(flat)
    result["seconds"] = time.monotonic() - started
    return result
