"""Per-token cost of watching `model.generate`, neuralflow against the alternatives, interleaved.

    from neuralflow.benchmarks.overhead import measure_overhead
    result = measure_overhead(model, ids, new_tokens=32, reps=20)
    result["variants"]["neuralflow"]["ratio"]["median"]      # e.g. 1.02: 2 % slower than none

Variants, each one full generate of `new_tokens` greedy tokens (EOS ignored):
  none        plain generate, nothing attached;
  neuralflow  an Engine publishing to a free loopback port, with a live subscriber process
              (benchmarks/listener.py) receiving every frame, as a viewer would (without pyzmq:
              frames go to a no-op on_frame sink, and "subscriber" says so);
  naive       forward hooks that copy each layer's last-token state to the host with .cpu()
              (one device sync per layer) and render the frame on the host with numpy;
  seed        the original script's way: generate(output_hidden_states=True,
              return_dict_in_generate=True), then each step's [layers, hidden] last-token
              states to the host and rendered with numpy after generation (note: transformers
              puts the final norm's output in the last entry, which the script used as is).
Where the engine's own cost goes (BREAKDOWN, the suite's "overhead:breakdown" section): the
Engine with its later stages switched off, no publisher:
  nf:hooks    the hooks and their layer copies only;
  nf:render   plus the frame math;
  nf:deliver  plus shipping to the pinned ring and the delivery thread (frames to a no-op sink);
and then "neuralflow", which adds the publisher and a subscriber process. "nf:unbatched" is
"neuralflow" with one copy launch per layer and no CUDA graph for the frame math, as the engine
was before the first H200 run (GPU A/B of that change).
Hooks, engines and the subscriber connection are set up and torn down outside the timed region.
One Engine serves all of a call's neuralflow runs, attached for each run, as a user attaches one
Engine for a session: code compiled with its hooks, and CUDA graphs recorded on its buffers, are
reused (a fresh Engine's new buffer addresses would make CUDA graphs re-record in every run).
Three times per rep (on CUDA the device is synchronized at each boundary):
  wall   the generate call plus any rendering after it, divided by new_tokens;
  cpu    the generating thread's CPU time over the same span, divided by new_tokens: the host
         work capture adds to that thread, blind to preemption (a noisy VM's stolen time) and
         to waiting for the GIL; on CUDA it also counts the host's spin while it waits for the
         device, so it says most where the host is the bottleneck (eager decoding);
  step   the median interval between consecutive decode forwards (a forward pre-hook on the
         model stamps each start; the last interval ends when generate returns), plus any
         rendering after generate divided by new_tokens. Robust to the seconds-long stalls of a
         shared machine; step_clock=False turns the stamp hook off (under torch.compile).

Method: variants run interleaved, one run of each per round, the order rotated every round
(none A B C, A B C none, B C none A, ...) so that no variant always follows the same one;
`warmup` rounds are discarded, then `reps` rounds are kept. Each run's ratio is its time over
the mean of the nearest "none" run before it and the nearest after it, which cancels slow drift
of a shared machine. Reported per variant: median per-token time, and the median ratio
with its 10/25/75/90 percentiles, for both times; for "none" itself (and as "noise") the ratio is
that of each "none" run to the previous one: the run-to-run noise floor of the machine. Also
"fastest_step_ratio": the variant's fastest rep over the fastest "none" rep (step times), since
interference from other processes only ever adds time.
"""

from __future__ import annotations

import functools
import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from neuralflow.benchmarks.baselines import numpy_frame
from neuralflow.benchmarks.listener import Listener, available, free_endpoint
from neuralflow.benchmarks.models import greedy_kwargs
from neuralflow.engine import Engine
from neuralflow.engine.layers import decoder_layers

VARIANTS = ("none", "neuralflow", "naive", "seed")


@dataclass
class _Timing:
    """One rep: wall seconds of the whole call, seconds per decode step (median, see below) and
    the generating thread's CPU seconds for the whole call."""

    wall: float
    step: float
    cpu: float


@dataclass
class _Setup:
    model: torch.nn.Module
    ids: torch.Tensor
    new_tokens: int
    width: int
    generate_kwargs: dict
    endpoint: str = ""
    device: torch.device = field(default=None)
    engines: dict = field(default_factory=dict)  # variant -> its one Engine, attached per run
    starts: list = field(default_factory=list)  # perf_counter at each forward's start
    generated: float = 0.0  # perf_counter when generate returned

    def sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync point: timing boundary only

    def clock(self, module, args) -> None:
        """Forward pre-hook on the model, registered before any variant's hooks."""
        self.starts.append(time.perf_counter())

    def generate(self, **extra):
        out = self.model.generate(self.ids, **greedy_kwargs(self.new_tokens),
                                  **self.generate_kwargs, **extra)
        self.sync()
        self.generated = time.perf_counter()
        return out

    def timed(self, fn) -> _Timing:
        """Time fn(), which calls self.generate once. The step time is the median interval
        between consecutive decode forwards (the last one ends when generate returns), plus
        the time spent after generate (the seed variant's rendering) spread over the tokens."""
        self.starts.clear()
        gc.collect()  # every rep starts from the same garbage state (the seed variant makes plenty)
        self.sync()
        start, cpu_start = time.perf_counter(), time.thread_time()
        fn()
        self.sync()
        end, cpu_end = time.perf_counter(), time.thread_time()
        intervals = np.diff(self.starts[1:] + [self.generated])  # [0] is the prefill
        step = float(np.median(intervals)) if intervals.size else (self.generated - start) / self.new_tokens
        return _Timing(wall=end - start, step=step + (end - self.generated) / self.new_tokens,
                       cpu=cpu_end - cpu_start)


def _run_none(s: _Setup) -> tuple[_Timing, dict]:
    return s.timed(s.generate), {}


def _counts(engine: Engine) -> dict:
    return {k: v for k, v in engine.stats.items() if not isinstance(v, dict)}


class _PartialEngine(Engine):
    """The Engine with the stages after `upto` switched off ("hooks", "render" or "deliver")."""

    def __init__(self, model, upto: str, **kwargs):
        super().__init__(model, on_frame=lambda frame: None, **kwargs)
        self.upto = upto

    def _render(self) -> None:
        if self.upto != "hooks":
            super()._render()

    def _ship(self) -> None:
        if self.upto == "deliver":
            super()._ship()


class _UnbatchedEngine(Engine):
    """The Engine as first measured on an H200 (commit 90ea460), for A/B runs against the current
    one: one copy launch per layer in every step, and the frame math called, not replayed as a
    CUDA graph."""

    def _warm_up(self) -> None:
        super()._warm_up()
        self._graphs = {}
        self._one_device = False  # the per-layer copies, as for a model split over devices


def _engine(s: _Setup, variant: str) -> Engine:
    if variant not in s.engines:
        if variant in ("neuralflow", "nf:unbatched"):
            cls = Engine if variant == "neuralflow" else _UnbatchedEngine
            sink = None if s.endpoint else (lambda frame: None)  # no pyzmq: frames end at a no-op sink
            s.engines[variant] = cls(s.model, publish=s.endpoint or None, on_frame=sink, width=s.width)
        else:
            s.engines[variant] = _PartialEngine(s.model, variant.split(":")[1], width=s.width)
    return s.engines[variant]


def _run_engine(s: _Setup, variant: str) -> tuple[_Timing, dict]:
    engine = _engine(s, variant)
    before = _counts(engine)
    with engine:
        wait = getattr(engine.publisher, "wait_for_subscribers", None)
        subscribed = wait(1, timeout=10.0) if wait else False
        timing = s.timed(s.generate)
    info = {k: v - before[k] for k, v in _counts(engine).items()}  # this run's frames
    publisher = engine.stats.get("publisher", {})
    info["socket_drops"] = publisher.get("socket_drops", 0)
    info["subscribed"] = int(subscribed)
    info["errors"] = int(engine.error is not None)
    return timing, info


class _NaiveHooks:
    """What a user writes first: .cpu() of each layer's last-token state, numpy frame on the host."""

    def __init__(self, model: torch.nn.Module, width: int):
        self.layers = decoder_layers(model)[1]
        self.width = width
        self.rows: list = [None] * len(self.layers)
        self.frames = 0
        self.handles: list = []

    def __enter__(self) -> "_NaiveHooks":
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, i: int):
        last = i == len(self.layers) - 1

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.rows[i] = hidden[0, -1].detach().float().cpu().numpy()  # sync per layer
            if last:
                self.frame = numpy_frame(np.stack(self.rows), self.width)
                self.frames += 1

        return hook


def _run_naive(s: _Setup) -> tuple[_Timing, dict]:
    with _NaiveHooks(s.model, s.width) as hooks:
        timing = s.timed(s.generate)
    return timing, {"frames": hooks.frames}


def _run_seed(s: _Setup) -> tuple[_Timing, dict]:
    frames = []

    def generate_then_render():
        out = s.generate(output_hidden_states=True, return_dict_in_generate=True)
        for step in out.hidden_states:  # one tuple of (embedding, layer 1..L) per forward
            states = torch.stack([h[0, -1] for h in step[1:]]).float().cpu().numpy()
            frames.append(numpy_frame(states, s.width))

    return s.timed(generate_then_render), {"frames": len(frames)}


BREAKDOWN = ("none", "nf:hooks", "nf:render", "nf:deliver", "neuralflow")
RUNNERS = {"none": _run_none, "naive": _run_naive, "seed": _run_seed,
           **{v: functools.partial(_run_engine, variant=v) for v in BREAKDOWN[1:] + ("nf:unbatched",)}}


def spread(values) -> dict:
    """median and 10/25/75/90 percentiles of a list of numbers."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {"median": float(p50), "p10": float(p10), "p25": float(p25), "p75": float(p75),
            "p90": float(p90), "n": int(a.size)}


def _ratios(sequence: list, variant: str, key: str) -> dict:
    """Spread of the ratios of `variant`'s runs to their baselines, from the runs in execution
    order [(variant, timing)]: a run's baseline is the mean of the nearest "none" run before it
    and the nearest after it (one of them at the ends). For "none" itself: each run over the
    previous "none" run, the noise floor."""
    value = [getattr(t, key) for _, t in sequence]
    nones = [i for i, (v, _) in enumerate(sequence) if v == "none"]
    if variant == "none":
        return spread([value[b] / value[a] for a, b in zip(nones, nones[1:])])
    ratios = []
    for i, (v, _) in enumerate(sequence):
        if v != variant:
            continue
        near = [max((j for j in nones if j < i), default=None), min((j for j in nones if j > i), default=None)]
        base = [value[j] for j in near if j is not None]
        ratios.append(value[i] / (sum(base) / len(base)))
    return spread(ratios)


def _overhead_pct(ratio: dict, variant: str):
    return 100.0 * (ratio["median"] - 1.0) if ratio and variant != "none" else None


def _summarize(sequence: list, infos: dict, new_tokens: int) -> dict:
    step_none = min(t.step for v, t in sequence if v == "none")
    out = {}
    for variant in infos:
        reps = [t for v, t in sequence if v == variant]
        total = {}
        for info in infos[variant]:
            for k, v in info.items():
                total[k] = total.get(k, 0) + v
        ratio = _ratios(sequence, variant, "wall")
        step_ratio = _ratios(sequence, variant, "step")
        out[variant] = {
            "per_token_ms": spread([1e3 * t.wall / new_tokens for t in reps]),
            "ratio": ratio,
            "overhead_pct": _overhead_pct(ratio, variant),
            "step_ms": spread([1e3 * t.step for t in reps]),
            "step_ratio": step_ratio,
            "step_overhead_pct": _overhead_pct(step_ratio, variant),
            "fastest_step_ratio": min(t.step for t in reps) / step_none,
            "cpu_ms": spread([1e3 * t.cpu / new_tokens for t in reps]),
            "cpu_ratio": _ratios(sequence, variant, "cpu"),
            "counts": total,
        }
        delivered = [(i["delivery_cpu_s"], i["delivered"]) for i in infos[variant] if i.get("delivered")]
        if delivered:  # the delivery thread's CPU time per frame, run by run
            out[variant]["delivery_cpu_us"] = spread([1e6 * cpu / n for cpu, n in delivered])
    return out


def measure_overhead(model: torch.nn.Module, prompt_ids: torch.Tensor, new_tokens: int = 32,
                     reps: int = 20, variants=VARIANTS, *, warmup: int = 2, width: int = 512,
                     generate_kwargs: dict | None = None, deadline: float | None = None,
                     min_reps: int = 3, step_clock: bool = True, progress=None) -> dict:
    """Time `variants` interleaved inside model.generate (see the module docstring).

    deadline: a time.monotonic() value after which no new round starts (once min_reps are in).
    progress: callable(str) for one line per round. Returns a JSON-ready dict.
    """
    variants = tuple(variants)
    if "none" not in variants:
        raise ValueError(f"variants must include 'none' (the baseline), got {variants}")
    unknown = set(variants) - set(RUNNERS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(RUNNERS)}")
    setup = _Setup(model, prompt_ids, new_tokens, width, dict(generate_kwargs or {}),
                   device=next(model.parameters()).device)
    sequence = []  # (variant, _Timing) of the timed runs, in execution order
    infos = {v: [] for v in variants}
    warm = {v: [] for v in variants}
    publish = bool({"neuralflow", "nf:unbatched"} & set(variants)) and available()
    listening = Listener(free_endpoint()) if publish else nullcontext()
    started = time.monotonic()
    # registered first, so it runs before the variants' hooks
    clock = model.register_forward_pre_hook(setup.clock) if step_clock else None
    try:
        with listening as listener:
            setup.endpoint = listener.endpoint if listener is not None else ""
            for r in range(warmup + reps):
                if deadline is not None and r >= warmup + min_reps and time.monotonic() > deadline:
                    break
                line = []
                k = r % len(variants)
                for variant in variants[k:] + variants[:k]:  # rotated: no variant keeps one position
                    timing, info = RUNNERS[variant](setup)
                    if r < warmup:
                        warm[variant].append(timing)
                    else:
                        sequence.append((variant, timing))
                        infos[variant].append(info)
                    line.append(f"{variant} {1e3 * timing.wall / new_tokens:.1f}/{1e3 * timing.step:.1f}")
                if progress:
                    label = "warm-up" if r < warmup else f"rep {r - warmup + 1}/{reps}"
                    progress(f"  overhead {label}: {', '.join(line)} ms/token (wall/step)")
    finally:
        if clock is not None:
            clock.remove()
    if not sequence:
        raise RuntimeError("no timed rounds ran (deadline too early?)")
    summary = _summarize(sequence, infos, new_tokens)
    times = {v: [t for name, t in sequence if name == v] for v in variants}
    return {
        "config": {"new_tokens": new_tokens, "reps": len(infos["none"]), "warmup": warmup,
                   "variants": list(variants), "width": width, "prompt_tokens": int(prompt_ids.shape[1]),
                   "step_clock": step_clock,
                   "device": str(setup.device), "dtype": str(next(model.parameters()).dtype),
                   "generate_kwargs": {k: str(v) for k, v in setup.generate_kwargs.items()}},
        "variants": summary,
        "noise": {"wall": summary["none"]["ratio"], "step": summary["none"]["step_ratio"]},
        "subscriber": (getattr(listener, "stats", {}) if publish
                       else {"error": "pyzmq missing: frames went to a no-op sink"} if "neuralflow" in variants
                       else {}),
        "warmup_ms_per_token": {v: [1e3 * t.wall / new_tokens for t in ts] for v, ts in warm.items()},
        "raw_ms_per_token": {v: [1e3 * t.wall / new_tokens for t in ts] for v, ts in times.items()},
        "raw_step_ms": {v: [1e3 * t.step for t in ts] for v, ts in times.items()},
        "seconds": time.monotonic() - started,
    }
