"""The GPU benchmark: Mistral-7B architecture, random bf16 weights, sdpa, batch 1, one run.

    python -m neuralflow.benchmarks.gpu                  # H100/H200, about 8 minutes, writes $OUT
    python -m neuralflow.benchmarks.gpu --quick          # fewer tokens and reps, about 4 minutes
    python -m neuralflow.benchmarks.gpu --device cpu --quick --small   # dry run of the logic

Sections, in this order (each in try/except: a failure is recorded and the next one runs; the
JSON and the table are rewritten after every section, and overhead:static's timing before its
frames-vs-eager check, so a run cut short keeps what it got):
  correctness      Engine frames against `render` of the same states recorded independently
                   by a second set of hooks during the same generate (a few steps; seed and
                   reference norms, the two frame-math variants an Engine may replay), and the
                   host syncs engine code makes on the generating thread (must be none);
  frame_op         the [32, 4096] frame op, ours (compiled) against eager torch, device time
                   from CUDA events; plus a torch.profiler listing of what one call launches;
  hooks            the layer hooks of one eager decode token, outputs held and copied at once
                   (the Engine now) against one copy launch per layer (before), host-bound time;
                   and all the Engine does per token ("engine": hooks and their dispatch,
                   frame-math graph replay, shipping, delivery thread running) less the bare
                   module calls, which over the eager "none" step time is the Engine's direct
                   cost, a second eager estimate free of run-to-run noise;
  overhead:eager   eager generate, 128 new tokens, none / neuralflow / nf:unbatched interleaved
                   (nf:unbatched: the engine of the first H200 run, one copy launch per layer and
                   no CUDA graph for the frame math: the A/B of that change); also the delivery
                   thread's CPU time per frame (Engine.stats), which added to the direct cost
                   bounds the Engine's share cautiously (its Python work holds the GIL);
  memory           CUDA and host memory added by capture over 1,000 tokens;
  overhead:static  generate(cache_implementation="static") (auto-compiled, CUDA graphs), none /
                   neuralflow interleaved; logs mentioning cudagraphs, the inductor's cudagraph
                   skip counter, graph breaks and recompiles are recorded alongside. Last, as
                   compiling is slow and capture under compile may fail (issue 7).
Optional, only when named in --sections (they run after the others):
  overhead:baselines  eager generate, none / neuralflow / naive / seed interleaved (the issue 6
                   comparison; measured once, noisily, on 2026-11-27);
  overhead:breakdown  eager generate with the Engine's stages switched off in turn
                   (overhead.BREAKDOWN): what the hooks, the frame math, the delivery thread and
                   the publisher each add per token.
--budget-s bounds the whole run: the repeated sections stop adding reps at their share of the
time (overhead:eager leaves STATIC_RESERVE_S for the compiled section), and a section is skipped
(recorded as such) when too little time is left.
Output: $OUT/gpu.json and $OUT/gpu.txt ($OUT defaults to ./out), frame op traces alongside.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from neuralflow.benchmarks.report import capture_problems, environment, tables, verdict, write_json


@dataclass
class GpuConfig:
    new_tokens: int = 128
    reps: int = 12  # eager; the deadline usually stops it first
    warmup: int = 1
    static_reps: int = 6
    static_warmup: int = 2  # compiles: one round for each of none and neuralflow, then steady
    correctness_steps: int = 4
    frame_iters: int = 200
    frame_rounds: int = 10
    memory_tokens: int = 1000
    memory_chunk: int = 100
    prompt_tokens: int = 16


QUICK = dict(new_tokens=32, reps=4, static_reps=3, frame_iters=100, frame_rounds=5,
             memory_tokens=200, memory_chunk=50)
SMALL_CPU = dict(new_tokens=6, reps=2, warmup=1, static_reps=2, static_warmup=1, correctness_steps=3,
                 frame_iters=5, frame_rounds=2, memory_tokens=12, memory_chunk=4, prompt_tokens=6)
MIN_SECONDS = {"correctness": 20, "frame_op": 60, "hooks": 15, "overhead:eager": 60, "memory": 60,
               "overhead:static": 150}  # also the order they run in: the riskiest last
STATIC_RESERVE_S = 200  # kept for overhead:static: it took 165 s on an H200, compiling included
SECTIONS = tuple(MIN_SECONDS)
OPTIONAL = {"overhead:baselines": 90, "overhead:breakdown": 90}  # only when named, after the others
EAGER = ("none", "neuralflow", "nf:unbatched")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def correctness(model, ids, steps: int) -> dict:
    """Engine frames vs render() and the numpy baseline on the same, independently recorded states:
    with the seed norm, and with norm="reference" (the first frame's statistics frozen), the two
    variants of the frame math the Engine captures as CUDA graphs for eager forwards."""
    from neuralflow.benchmarks.models import greedy_kwargs
    from neuralflow.engine import Engine
    from neuralflow.engine.layers import last_token_outputs

    runs = {}
    for norm in ("seed", "reference"):
        frames = []
        with Engine(model, norm=norm, on_frame=frames.append, strict=True) as engine:
            with last_token_outputs(model) as recorded:  # independent hooks, cloned states
                syncs = engine_syncs(lambda: model.generate(ids, **greedy_kwargs(steps)))
        runs[norm] = (frames, recorded, engine, syncs)
    (frames, recorded, engine, syncs), (ref_frames, ref_recorded, ref_engine, ref_syncs) = runs.values()
    rows = _compare(frames, recorded)
    ref_rows = _compare(ref_frames, ref_recorded, norm="reference",
                        reference=(ref_frames[0].lo, ref_frames[0].hi) if ref_frames else None)
    good = lambda r: r["pixels_differing"] <= 1e-3 and max(r["lo_rel_diff"], r["hi_rel_diff"]) <= 1e-4
    ok = (len(frames) == len(recorded) == len(ref_frames) == len(ref_recorded) == steps
          and engine.error is None and ref_engine.error is None and all(map(good, rows + ref_rows))
          and syncs.get("syncs_in_engine_code", 0) == ref_syncs.get("syncs_in_engine_code", 0) == 0)
    return {"ok": bool(ok), "frames": len(frames), "recorded": len(recorded), "syncs": syncs,
            "engine_stats": {k: v for k, v in engine.stats.items() if not isinstance(v, dict)},
            "steps": rows, "reference_norm_steps": ref_rows,
            "tolerance": "pixels differing <= 0.1 %, lo/hi relative diff <= 1e-4, no host sync in engine code"}


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| / |b| over the entries (per-layer lo or hi)."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def _compare(frames, recorded, **render_kwargs) -> list[dict]:
    """Per step: how far each Engine frame is from render() of the recorded states."""
    from neuralflow.benchmarks.baselines import numpy_frame
    from neuralflow.engine import render

    rows = []
    for frame, states in zip(frames, recorded):
        want = render(states, **render_kwargs)
        ours, ref = frame.pixels.astype(np.int16), want.pixels.cpu().numpy().astype(np.int16)
        row = {"step": frame.step, "pixels_differing": float(np.mean(ours != ref)),
               "max_pixel_diff": int(np.max(np.abs(ours - ref))),
               "lo_rel_diff": _rel_diff(frame.lo, want.lo.cpu().numpy()),
               "hi_rel_diff": _rel_diff(frame.hi, want.hi.cpu().numpy())}
        if not render_kwargs:  # the numpy baseline draws the seed norm only
            host = numpy_frame(states.cpu().numpy()).astype(np.int16)
            row["numpy_baseline_pixels_differing"] = float(np.mean(host != ref))
        rows.append(row)
    return rows


def engine_syncs(run) -> dict:
    """Run run() under torch.cuda.set_sync_debug_mode("warn") and count the host syncs that
    neuralflow.engine code made on this (the generating) thread: the hooks must make none.
    The CPU tests' hot-path guard cannot see device syncs; this is its GPU counterpart."""
    if not torch.cuda.is_available():
        run()
        return {"checked": False}
    generating, counts = threading.get_ident(), {"all": 0, "engine": 0}
    where: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        if threading.get_ident() != generating or "synchroniz" not in str(message):
            return
        counts["all"] += 1
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith("neuralflow.engine"):
                counts["engine"] += 1
                where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                break
            frame = frame.f_back

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"checked": True, "syncs_on_generating_thread": counts["all"],
            "syncs_in_engine_code": counts["engine"], "engine_sync_sites": sorted(set(where))[:10]}


def frame_op(device: str, cfg: GpuConfig, out_dir: Path, shape) -> dict:
    from neuralflow.benchmarks.frameop import measure_frame_op, profile_frame_op

    result = measure_frame_op(shape, device, iters=cfg.frame_iters, rounds=cfg.frame_rounds, progress=_log)
    try:
        profile = profile_frame_op(shape, device, trace_path=out_dir / "frame_op_trace.json")
        result["profile"] = profile
        result["launched_per_call"] = {k: v["count"] for k, v in profile.items()}
        result["profiled_device_us"] = {k: v["total_us"] for k, v in profile.items()}
    except Exception:
        result["profile"] = {"error": traceback.format_exc()}
    return result


class SmClock:
    """The GPU's SM clock (MHz), sampled from NVML every 50 ms on a thread while a section runs.
    A lightly loaded GPU (host-bound eager decoding) may clock down between kernels (345 MHz
    idle against 1980 under load was seen on an H200 here), which would move step times from
    one rep to the next: this says whether it did. Reads only; the clocks are left alone."""

    def __init__(self, device: str):
        self.samples: list[int] = []
        self.error = None
        self.handle = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0)
        except Exception as err:  # no NVML binding or library here
            self.error = repr(err)

    def __enter__(self):
        self.stop = threading.Event()
        if self.handle is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.samples.append(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))
            except Exception as err:
                self.error = repr(err)
                return

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join()

    def report(self) -> dict:
        from neuralflow.benchmarks.overhead import spread
        return {**spread(self.samples), **({"error": self.error} if self.error else {})}


class _CompileWatch:
    """Collect torch log records about cudagraphs/recompiles and the dynamo/inductor counters."""

    def __init__(self):
        self.messages: list[str] = []

    def __enter__(self):
        try:
            torch._logging.set_logs(cudagraphs=True, recompiles=True, graph_breaks=True)
        except Exception as err:  # the log names differ between torch versions
            self.messages.append(f"(set_logs failed: {err!r})")
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append(record.getMessage()[:500])
        # the cudagraphs artifact logger does not propagate to "torch"
        self.loggers = [logging.getLogger(name) for name in
                        ("torch", "", "torch._inductor.cudagraph_trees.__cudagraphs")]
        for logger in self.loggers:
            logger.addHandler(self.handler)
        self.before = self._counters()
        # every CUDA-graph recording, re-recordings included ("static input data pointer
        # changed": a graph re-recorded on every step ran 4.3x slower on an H200, and no
        # counter or skip message showed it)
        self.recordings = 0
        try:
            from torch._inductor.cudagraph_trees import CUDAGraphTreeManager
            self.manager, record = CUDAGraphTreeManager, CUDAGraphTreeManager.record_function

            def counted(manager, *args, **kwargs):
                self.recordings += 1
                return record(manager, *args, **kwargs)

            CUDAGraphTreeManager.record_function = counted
            self.record = record
        except Exception as err:
            self.manager = None
            self.messages.append(f"(cannot count CUDA-graph recordings: {err!r})")
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        if self.manager is not None:
            self.manager.record_function = self.record

    @staticmethod
    def _counters() -> dict:
        try:
            from torch._dynamo.utils import counters
            return {"cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
                    "graph_breaks": int(sum(counters["graph_break"].values())),
                    "unique_graphs": int(counters["stats"]["unique_graphs"])}
        except Exception as err:
            return {"error": repr(err)}

    def report(self) -> dict:
        after = self._counters()
        delta = {k: after[k] - self.before.get(k, 0) for k in after if isinstance(after[k], int)}
        unique = list(dict.fromkeys(self.messages))
        skipping = [m for m in unique if "skipping cudagraphs" in m.lower()]
        rerecords = [m for m in unique if "re-recording" in m.lower()]
        return {"counters": delta, "skipping_cudagraphs": skipping[:20],
                "cudagraph_recordings": self.recordings, "rerecording": rerecords[:10],
                "cudagraphs_skipped": bool(skipping) or delta.get("cudagraph_skips", 0) > 0,
                "messages": [m for m in unique if "cudagraph" in m.lower() or "recompil" in m.lower()
                             or "graph break" in m.lower()][:60]}


def _static_kwargs(device) -> dict:
    """generate() kwargs for the static-cache compiled path. transformers compiles its decode
    step on CUDA only; the CPU dry run asks for it too, so that it exercises the same path
    (retraces, hook guards, frames) before a GPU run does."""
    if torch.device(device).type == "cuda":
        return {"cache_implementation": "static"}
    from transformers import CompileConfig
    config = CompileConfig()
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


def _static_frames_vs_eager(model, ids, steps: int) -> dict:
    """Frames captured under the static-cache compiled generate against eager capture, same prompt.

    Compared while both runs fed the same tokens (bf16 static and dynamic caches may pick
    different tokens after a while)."""
    from neuralflow.benchmarks.models import greedy_kwargs
    from neuralflow.engine import Engine

    runs = {}
    for name, extra in (("static", _static_kwargs(ids.device)), ("eager", {})):
        frames = []
        with Engine(model, on_frame=frames.append) as engine:
            model.generate(ids, **greedy_kwargs(steps), **extra)
        runs[name] = (frames, engine.error)
    (static, static_error), (eager, _) = runs["static"], runs["eager"]
    rows = []
    for a, b in zip(static, eager):
        if a.token_id != b.token_id:
            break
        rows.append({"step": a.step, "pixels_differing": float(np.mean(a.pixels != b.pixels)),
                     "lo_rel_diff": _rel_diff(a.lo, b.lo)})
    return {"static_frames": len(static), "eager_frames": len(eager), "expected": steps,
            "static_error": repr(static_error) if static_error else None, "compared": rows,
            "max_pixels_differing": max((r["pixels_differing"] for r in rows), default=None)}


def overhead_static(model, ids, cfg: GpuConfig, deadline: float, keep=lambda partial: None) -> dict:
    """Static-cache (compiled) generate, none / neuralflow interleaved, with compile diagnostics.

    neuralflow.engine turns on torch._dynamo's guards on module hooks, so attaching and detaching
    retrace once and then reuse both variants; "capture_complete" says whether every timed
    forward produced a frame that reached the subscriber ("capture_problems" says what did not),
    and the Engine's "stale" count whether any frame repeated. keep(partial) is called with the
    timed result before the frames-vs-eager check, which builds a fresh Engine and may retrace and
    record CUDA graphs near the deadline: a run cut short there still has the timing."""
    from neuralflow.benchmarks.overhead import measure_overhead

    with _CompileWatch() as watch:
        try:
            result = measure_overhead(model, ids, cfg.new_tokens, cfg.static_reps, ("none", "neuralflow"),
                                      warmup=cfg.static_warmup, deadline=deadline, progress=_log,
                                      step_clock=False,  # a timing hook would join the compiled graph
                                      generate_kwargs=_static_kwargs(ids.device))
            result["capture_problems"] = capture_problems(result)
            result["capture_complete"] = not result["capture_problems"]
            result["frames_expected"] = result["config"]["reps"] * cfg.new_tokens
            # warm-up and timed reps: a few recordings per compiled graph, not one per step
            result["cudagraph_recordings_in_measure"] = watch.recordings
        except Exception:
            result = {"error": traceback.format_exc()}
        keep({**result, "compile": watch.report(),
              "frames_vs_eager": {"error": "not finished: the run ended during this check"}})
        try:
            result["frames_vs_eager"] = _static_frames_vs_eager(model, ids, cfg.correctness_steps)
        except Exception:
            result["frames_vs_eager"] = {"error": traceback.format_exc()}
    result["compile"] = watch.report()
    return result


def _pct(ratio: dict) -> str:
    return (f"{100 * (ratio['median'] - 1):+.2f} % (IQR {100 * (ratio['p25'] - 1):+.2f} to "
            f"{100 * (ratio['p75'] - 1):+.2f} %)")


def goals(result: dict) -> list[str]:
    """Issue 6/7's goals against what this run measured, one line each (reported, not asserted)."""
    lines = []

    def overhead(key: str, label: str) -> None:
        section = result.get(key, {})
        ours = section.get("variants", {}).get("neuralflow", {})
        step, wall, cpu = ours.get("step_ratio"), ours.get("ratio"), ours.get("cpu_ratio")
        if not step or not wall:
            return
        noise = section["variants"]["none"]["step_ratio"]
        problems = capture_problems(section)
        lines.append(f"{label} overhead <= 1 %: step {_pct(step)}, wall {_pct(wall)}; noise floor "
                     f"(none over none, step) IQR {100 * (noise['p25'] - 1):+.2f} to "
                     f"{100 * (noise['p75'] - 1):+.2f} %"
                     + (f"; generating thread's CPU time {100 * (cpu['median'] - 1):+.2f} %" if cpu else "")
                     + ": " + (f"invalid ({'; '.join(problems)})" if problems else verdict([step, wall])))

    overhead("overhead:eager", "eager")
    engine_us = result.get("hooks", {}).get("engine_over_bare_us", {}).get("median")
    eager = result.get("overhead:eager", {})
    none_steps = eager.get("raw_step_ms", {}).get("none")
    if engine_us and none_steps:  # over the fastest "none" step: the larger, more cautious share
        fastest = min(none_steps)
        share = lambda us: f"{us / (10 * fastest):.2f} %: {'met' if us <= 10 * fastest else 'missed'}"
        lines.append(f"eager overhead <= 1 %, the Engine's direct cost: {engine_us:.0f} us of host time "
                     f"per token (hooks section, engine - bare) over the fastest none step "
                     f"({fastest:.2f} ms) = {share(engine_us)}")
        delivery = eager.get("variants", {}).get("neuralflow", {}).get("delivery_cpu_us", {}).get("median")
        if delivery:  # its Python work holds the GIL that the host-bound generating thread needs
            lines.append(f"eager overhead <= 1 %, a cautious bound: the direct cost plus all of the "
                         f"delivery thread's CPU time per frame during the eager generates ({delivery:.0f} "
                         f"us, live subscriber), as if all taken from the generating thread: "
                         f"{engine_us + delivery:.0f} us = {share(engine_us + delivery)}")
    overhead("overhead:static", "compiled (static cache)")
    frame = result.get("frame_op", {})
    device_us = frame.get("profiled_device_us", {}).get("neuralflow")
    if device_us is not None:  # the events time of a call is host-bound: not the device time
        per_call = {k: f"{v['median']:.1f}" for k, v in frame.get("us_per_frame", {}).items()}
        lines.append(f"frame op <= 10 us device time: {device_us:.1f} us, the sum of its kernels "
                     f"(torch.profiler): {'met' if device_us <= 10 else 'missed'}; us per call by "
                     f"{frame.get('timing')}: {per_call}")
    memory = result.get("memory", {})
    if "flat" in memory:
        lines.append(f"flat memory: {'met' if memory['flat'] else 'missed'} (RSS slope "
                     f"{memory['neuralflow']['rss_slope_mib_per_1k_tokens']:+.3f} MiB per 1k tokens"
                     + (f", CUDA slope {memory['neuralflow']['cuda_slope_mib_per_1k_tokens']:+.3f}"
                        if "cuda_slope_mib_per_1k_tokens" in memory["neuralflow"] else "") + ")")
    return lines


def _summary(result: dict) -> str:
    """Lines the generic tables do not cover: goals, correctness, kernels per frame, compile notes."""
    lines = ["goals: " + line for line in goals(result)]
    c = result.get("correctness", {})
    if "ok" in c:
        worst = max((r["pixels_differing"] for r in c["steps"] + c.get("reference_norm_steps", [])),
                    default=0.0)
        lines.append(f"correctness: ok={c['ok']} frames={c['frames']} recorded={c['recorded']} "
                     f"worst pixels differing={worst:.2e} ({c['tolerance']})")
        syncs = c.get("syncs", {})
        if syncs.get("checked"):
            lines.append(f"  host syncs during generate: {syncs['syncs_on_generating_thread']} on the "
                         f"generating thread, {syncs['syncs_in_engine_code']} of them in engine code "
                         f"{syncs['engine_sync_sites']}")
    f = result.get("frame_op", {})
    if "launched_per_call" in f:
        lines.append(f"frame op launches per call: {f['launched_per_call']}; profiled device us: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in f["profiled_device_us"].items()))
        ours = f["profile"].get("neuralflow", {}).get("launched", [])
        lines.append("  neuralflow launched: " + "; ".join(r["name"] for r in ours[:12]))
    s = result.get("overhead:static", {})
    if "compile" in s:
        comp = s["compile"]
        lines.append(f"static/compiled: cudagraphs skipped={comp['cudagraphs_skipped']} "
                     f"counters={comp['counters']} CUDA-graph recordings={comp.get('cudagraph_recordings')} "
                     f"({s.get('cudagraph_recordings_in_measure')} over the warm-up and "
                     f"{2 * s.get('config', {}).get('reps', 0)} timed generate calls) "
                     f"(re-recordings logged: {len(comp.get('rerecording', []))}) "
                     f"capture complete={s.get('capture_complete')} "
                     f"(frames expected {s.get('frames_expected')})")
        vs = s.get("frames_vs_eager", {})
        lines.append(f"  frames static vs eager: {vs.get('static_frames')}/{vs.get('eager_frames')} frames, "
                     f"{len(vs.get('compared', []))} compared, max pixels differing "
                     f"{vs.get('max_pixels_differing')}, static error {vs.get('static_error') or vs.get('error')}")
        for m in comp["skipping_cudagraphs"][:5]:
            lines.append(f"  {m}")
    for key, section in result.items():
        if isinstance(section, dict) and "skipped" in section:
            lines.append(f"[{key}] skipped: {section['skipped']}")
        clock = section.get("sm_clock_mhz", {}) if isinstance(section, dict) else {}
        if clock.get("n"):
            lines.append(f"[{key}] SM clock MHz: p10 {clock['p10']:.0f}, median {clock['median']:.0f}, "
                         f"p90 {clock['p90']:.0f} ({clock['n']} samples)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralflow.benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, reps and samples")
    parser.add_argument("--small", action="store_true", help="tiny model and shapes (dry runs on a CPU)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default $OUT or ./out)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + tuple(OPTIONAL),
                        default=list(SECTIONS), help=f"default: all but {', '.join(OPTIONAL)}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for the whole run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    cfg = GpuConfig(**{**(QUICK if args.quick else {}), **(SMALL_CPU if args.small else {})})
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from neuralflow.benchmarks.models import PRESETS, build, prompt_ids

    preset = PRESETS["tiny" if args.small else "mistral-7b"]
    result = {"environment": environment(args.device), "config": asdict(cfg), "args": vars(args),
              "model": {"preset": "tiny" if args.small else "mistral-7b", **asdict(preset)}}

    def save():
        result["seconds"] = time.monotonic() - started
        write_json(result, out_dir / "gpu.json")
        (out_dir / "gpu.txt").write_text(tables(result) + "\n\n" + _summary(result) + "\n")

    def keep(name, partial):  # a section's result so far, saved in case the run is cut short
        result[name] = partial
        save()

    model = ids = None
    try:
        _log(f"building {result['model']['preset']} ({args.dtype}) on {args.device} ...")
        t = time.monotonic()
        model = build(preset, args.device, getattr(torch, args.dtype))
        ids = prompt_ids(model, cfg.prompt_tokens)
        result["model"]["build_s"] = time.monotonic() - t
    except Exception:
        result["model"]["error"] = traceback.format_exc()
        _log(result["model"]["error"])
    save()
    from neuralflow.benchmarks.hooks import measure_token_hooks
    from neuralflow.benchmarks.memory import measure_memory
    from neuralflow.benchmarks.overhead import BREAKDOWN, measure_overhead

    # what overhead:eager leaves for the sections after it (those asked for)
    later = ((MIN_SECONDS["memory"] if "memory" in args.sections else 0)
             + (STATIC_RESERVE_S if "overhead:static" in args.sections else 0))
    jobs = {
        "correctness": lambda left: correctness(model, ids, cfg.correctness_steps),
        "frame_op": lambda left: frame_op(args.device, cfg, out_dir, preset.shape),
        "hooks": lambda left: measure_token_hooks(*preset.shape, device=args.device,
                                                  dtype=getattr(torch, args.dtype), progress=_log),
        "overhead:eager": lambda left: measure_overhead(  # the time memory and static will not need
            model, ids, cfg.new_tokens, cfg.reps, EAGER, warmup=cfg.warmup, progress=_log,
            deadline=time.monotonic() + max(0.0, left - later)),
        "overhead:baselines": lambda left: measure_overhead(
            model, ids, cfg.new_tokens, cfg.reps, warmup=cfg.warmup, progress=_log,
            deadline=time.monotonic() + left - 20),
        "overhead:breakdown": lambda left: measure_overhead(
            model, ids, cfg.new_tokens, cfg.reps, BREAKDOWN, warmup=cfg.warmup, progress=_log,
            deadline=time.monotonic() + left - 20),
        "memory": lambda left: measure_memory(model, ids, cfg.memory_tokens, cfg.memory_chunk, progress=_log),
        "overhead:static": lambda left: overhead_static(model, ids, cfg, time.monotonic() + left - 30,
                                                        keep=lambda partial: keep("overhead:static", partial)),
    }
    limits = {**MIN_SECONDS, **OPTIONAL}
    for name in limits:
        if name not in args.sections:
            continue
        left = deadline - time.monotonic()
        needs_model = name not in ("frame_op", "hooks")
        if needs_model and model is None:
            result[name] = {"skipped": "no model (see model.error)"}
        elif left < limits[name] and not args.small:
            result[name] = {"skipped": f"out of time ({left:.0f} s left, needs ~{limits[name]} s)"}
        else:
            _log(f"[{name}] ({time.monotonic() - started:.0f} s elapsed, {left:.0f} s left)")
            with SmClock(args.device) as clock:
                try:
                    result[name] = jobs[name](left)
                except Exception:
                    result[name] = {"error": traceback.format_exc()}
                    _log(f"[{name}] failed:\n{result[name]['error']}")
            result[name]["sm_clock_mhz"] = clock.report()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        save()
    print(tables(result) + "\n\n" + _summary(result))
    _log(f"wrote {out_dir / 'gpu.json'} and {out_dir / 'gpu.txt'} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
