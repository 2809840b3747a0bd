"""The CPU benchmark suite, CI-sized: capture overhead, the frame operation and memory, one table.

    python -m neuralflow.benchmarks.suite --json bench.json      # about 2-4 minutes on 2 cores
    python -m neuralflow.benchmarks.suite --quick                # tiny model, under a minute: a smoke run

Model: a random-weight Mistral with 8 layers x 1024 hidden (models.PRESETS["ci"]), float32,
sdpa, batch 1, on the CPU. Sections (each recorded as {"error": traceback} if it fails):
  overhead   overhead.measure_overhead: none / neuralflow / naive / seed, interleaved
  overhead:breakdown  the engine with its stages switched off one by one (overhead.BREAKDOWN),
             on the tiny model (4 x 128), where the engine's fixed per-token cost dominates
  frame_op   frameop.measure_frame_op at the Mistral-7B shape [32, 4096] (also the compiled
             CPU variant of render_into, whose ~10 s compile is reported apart)
  hooks      hooks.measure_token_hooks at the Mistral-7B shape: the layer hooks of one eager decode
             token, outputs held and copied at once against one copy per layer, and all the
             Engine does per token (hooks, frame math, shipping, delivery thread running), all
             through real module calls, against the same calls without hooks
  memory     memory.measure_memory over 1,000 generated tokens (300 for the baseline)
Progress goes to stderr, the table to stdout, everything to --json. See benchmarks/RESULTS.md.
Under each overhead table: what the neuralflow runs captured and delivered, any capture problems,
and for "overhead" the CPU goal (at most 3 % per token, CPU_LIMIT) judged on the step ratio's
spread by report.verdict, the GPU script's rule (there applied to step and wall ratios). The
exit status is 1 when a section failed or the neuralflow runs captured less than a watched
generate does (their times would then understate the cost).

Threads: the suite runs torch on one thread by default (--threads). On a small shared machine
torch's OpenMP workers spin-wait and collapse when other processes take the cores (measured
here: 8 tokens at 75-130 ms each on 1 thread, 470-1150 ms on 2, with the load average at 7);
one thread keeps the numbers stable and leaves a core to the engine's delivery thread and the
subscriber process, as a GPU host's spare cores would. --threads 0 keeps torch's default.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, replace

import torch

from neuralflow.benchmarks.report import capture_problems, environment, tables, write_json

SECTIONS = ("overhead", "overhead:breakdown", "frame_op", "hooks", "memory")
CPU_LIMIT = 1.03  # the CPU goal, on the CI model: at most 3 % per token
CHECKS = {"overhead": CPU_LIMIT, "overhead:breakdown": None}  # the breakdown's tiny model has no goal


@dataclass
class SuiteConfig:
    preset: str = "ci"
    new_tokens: int = 16
    reps: int = 20
    warmup: int = 2
    prompt_tokens: int = 16
    frame_shape: tuple = (32, 4096)
    frame_iters: int = 50
    frame_rounds: int = 15
    frame_compiled: bool = True  # also time render_into(fuse=True) on the CPU (compiles ~10 s)
    memory_tokens: int = 1000
    memory_baseline_tokens: int = 300
    memory_chunk: int = 100
    breakdown_tokens: int = 32
    breakdown_reps: int = 15
    hooks_shape: tuple = (32, 4096)
    hooks_rounds: int = 30
    threads: int = 1  # torch intra-op threads; 0 keeps torch's default (see the module docstring)


PRESETS = {
    "ci": SuiteConfig(),
    "quick": SuiteConfig(preset="tiny", new_tokens=4, reps=2, warmup=1, prompt_tokens=4,
                         frame_shape=(4, 128), frame_iters=5, frame_rounds=3, frame_compiled=False,
                         memory_tokens=10, memory_baseline_tokens=10, memory_chunk=5,
                         breakdown_tokens=4, breakdown_reps=2, hooks_shape=(4, 128), hooks_rounds=2),
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(config: SuiteConfig, sections=SECTIONS, progress=_log) -> dict:
    """Run the suite on the CPU and return a JSON-ready dict, one key per section."""
    from neuralflow.benchmarks.frameop import measure_frame_op
    from neuralflow.benchmarks.hooks import measure_token_hooks
    from neuralflow.benchmarks.memory import measure_memory
    from neuralflow.benchmarks.models import PRESETS as MODELS, build, prompt_ids
    from neuralflow.benchmarks.overhead import BREAKDOWN, measure_overhead

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    result = {"environment": environment("cpu"), "config": dict(vars(config))}
    started = time.monotonic()
    model = ids = None
    if {"overhead", "memory"} & set(sections):
        progress(f"building the {config.preset!r} model {MODELS[config.preset]} ...")
        model = build(MODELS[config.preset])
        ids = prompt_ids(model, config.prompt_tokens)
    tiny = build(MODELS["tiny"]) if "overhead:breakdown" in sections else None
    jobs = {
        "overhead": lambda: measure_overhead(model, ids, config.new_tokens, config.reps,
                                             warmup=config.warmup, progress=progress),
        "overhead:breakdown": lambda: measure_overhead(
            tiny, prompt_ids(tiny, config.prompt_tokens), config.breakdown_tokens,
            config.breakdown_reps, BREAKDOWN, warmup=config.warmup, progress=progress),
        "frame_op": lambda: measure_frame_op(config.frame_shape, "cpu", iters=config.frame_iters,
                                             rounds=config.frame_rounds, compiled=config.frame_compiled,
                                             progress=progress),
        "hooks": lambda: measure_token_hooks(*config.hooks_shape, rounds=config.hooks_rounds,
                                             progress=progress),
        "memory": lambda: measure_memory(model, ids, config.memory_tokens, config.memory_chunk,
                                         baseline_tokens=config.memory_baseline_tokens,
                                         progress=progress),
    }
    for name in sections:
        progress(f"[{name}] ({time.monotonic() - started:.0f} s elapsed)")
        try:
            result[name] = jobs[name]()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
            progress(f"[{name}] failed:\n{result[name]['error']}")
    result["environment"]["load_average_end"] = environment("cpu")["load_average"]
    result["seconds"] = time.monotonic() - started
    return result


def problems(result: dict) -> list[str]:
    """Failed sections and overhead sections whose neuralflow runs did not capture everything."""
    found = []
    for key, section in result.items():
        if not isinstance(section, dict):
            continue
        if "error" in section:
            found.append(f"[{key}] failed")
        elif key in CHECKS and "neuralflow" in section.get("variants", {}):
            found += [f"[{key}] {p}" for p in capture_problems(section)]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="neuralflow bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--quick", action="store_true", help="tiny model, few reps: checks the suite runs")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--reps", type=int, help="interleaved rounds kept (default 20)")
    parser.add_argument("--new-tokens", type=int, help="tokens per generate call (default 16)")
    parser.add_argument("--memory-tokens", type=int, help="tokens sampled for memory (default 1000)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1; 0 = torch's default)")
    parser.add_argument("--model", dest="preset", choices=["ci", "tiny"],
                        help="model preset (default ci: 8 x 1024; tiny: 4 x 128, shows the fixed per-token cost)")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("reps", "new_tokens", "memory_tokens", "threads", "preset")
                 if getattr(args, k) is not None}
    config = replace(PRESETS["quick" if args.quick else "ci"], **overrides)
    result = run(config, args.sections)
    print(tables(result, CHECKS))
    if args.json:
        _log(f"wrote {write_json(result, args.json)}")
    found = problems(result)
    if found:
        _log("neuralflow bench: exit status 1: " + "; ".join(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
