"""Benchmark results as text tables and JSON, with the machine and versions they came from.

    from neuralflow.benchmarks.report import environment, tables, write_json
    result = {"environment": environment(), "overhead": ..., "frame_op": ..., "memory": ...}
    print(tables(result))
    write_json(result, "bench.json")

Every section is optional; one holding {"error": ...} is printed as that error. Also the checks
the CPU suite and the GPU script share: `verdict` (an overhead goal against the spread of its
ratios) and `capture_problems` (why the "neuralflow" runs did less than a watched generate).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def environment(device: str = "cpu") -> dict:
    """Date, machine, CPU load and library versions (torch, transformers, python)."""
    import torch
    import transformers

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _ratio_cells(r: dict) -> list[str]:
    if not r:
        return ["-", "-", "-"]
    return [f"{r['median']:.3f}", f"{r['p25']:.3f}-{r['p75']:.3f}", f"{r['p10']:.3f}-{r['p90']:.3f}"]


LIMIT = 1.01  # the GPU overhead goals: at most 1 % per token


def verdict(ratios: list[dict], limit: float = LIMIT) -> str:
    """"met" when the upper quartile of every ratio is within `limit`, "missed" when the lower
    quartile of one is above it, else "inconclusive" (the spread straddles the goal)."""
    if all(r["p75"] <= limit for r in ratios):
        return "met"
    if any(r["p25"] > limit for r in ratios):
        return "missed"
    return "inconclusive"


def capture_problems(section: dict) -> list[str]:
    """Why the "neuralflow" runs of an overhead section did not do all a watched generate does
    (frames missing, dropped or failed, no live subscriber): each one makes them cheaper."""
    counts = section["variants"]["neuralflow"]["counts"]
    reps, tokens = section["config"]["reps"], section["config"]["new_tokens"]
    expected = reps * tokens
    problems = []
    if counts.get("captured") != expected:
        problems.append(f"{counts.get('captured')} of {expected} frames captured")
    if counts.get("dropped") or counts.get("delivered") != counts.get("captured"):
        problems.append(f"{counts.get('dropped')} dropped, {counts.get('delivered')} delivered")
    if counts.get("errors"):
        problems.append(f"capture failed in {counts['errors']} runs")
    if counts.get("partial") or counts.get("stale"):  # hooks that did not run, or stale states
        problems.append(f"{counts.get('partial', 0)} forwards without a picture, "
                        f"{counts.get('stale', 0)} stale frames")
    if "error" in section.get("subscriber", {}):
        problems.append(section["subscriber"]["error"])
    elif counts.get("subscribed", 0) < reps:
        problems.append(f"a live subscriber in {counts.get('subscribed', 0)} of {reps} runs")
    return problems


def overhead_checks(o: dict, limit: float | None = None) -> str:
    """What the "neuralflow" runs captured and delivered, what went wrong, and with `limit` the
    step ratio's goal: a run that captured less looks cheaper, so it is never "met"."""
    counts, reps = o["variants"]["neuralflow"]["counts"], o["config"]["reps"]
    received = o.get("subscriber", {}).get("received", "-")
    lines = [f"capture (neuralflow runs): {counts.get('captured')} of {reps * o['config']['new_tokens']} "
             f"frames captured, {counts.get('delivered')} delivered, {counts.get('dropped')} dropped, "
             f"failed in {counts.get('errors', 0)} of {reps} runs;\n  subscriber live in "
             f"{counts.get('subscribed', 0)} of {reps} runs, received {received} frames (warm-up included)"]
    problems = capture_problems(o)
    if problems:
        lines.append("CAPTURE PROBLEMS (the times understate the cost): " + "; ".join(problems))
    if limit is not None:
        step = o["variants"]["neuralflow"]["step_ratio"]
        lines.append(f"goal <= {100 * (limit - 1):.0f} % per token: step x {step['median']:.3f} (IQR "
                     f"{step['p25']:.3f}-{step['p75']:.3f}, n {step['n']}; met when its upper quartile <= "
                     f"{limit}): " + ("invalid (capture problems)" if problems else verdict([step], limit)))
    return "\n".join(lines)


def overhead_table(o: dict) -> str:
    c = o["config"]
    rows = []
    for name, v in o["variants"].items():
        rows.append([name, f"{v['per_token_ms']['median']:.2f}", *_ratio_cells(v["ratio"])[:2],
                     f"{v['step_ms']['median']:.2f}", *_ratio_cells(v["step_ratio"])[:2],
                     f"{v['fastest_step_ratio']:.3f}", f"{v['cpu_ms']['median']:.2f}",
                     *_ratio_cells(v["cpu_ratio"])[:2], v["step_ratio"].get("n", 0)])
    head = (f"Per-token cost inside generate: {c['new_tokens']} new tokens, {c['reps']} interleaved reps "
            f"(+{c['warmup']} warm-up), {c['device']} {c['dtype']}"
            + (f", {c['generate_kwargs']}" if c.get("generate_kwargs") else ""))
    note = ("wall: whole call / tokens; step: median decode-step interval (+ rendering after generate);\n"
            "cpu: the generating thread's CPU time per token (blind to preemption and GIL waits).\n"
            "x: median ratio to the adjacent 'none' runs; IQR: its p25-p75 (p10-p90 in the JSON);\n"
            "n: runs per ratio. The 'none' row is the noise floor: each none run over the previous one.\n"
            "best x: the fastest step rep over the fastest 'none' step rep (interference only adds time).")
    if c.get("step_clock") is False:
        note += "\nstep here: the whole generate call per token, as wall (no step clock in compiled code)."
    header = ["variant", "wall ms", "wall x", "wall IQR", "step ms", "step x", "step IQR", "best x",
              "cpu ms", "cpu x", "cpu IQR", "n"]
    names = list(o["variants"])
    delivery = {n: v["delivery_cpu_us"] for n, v in o["variants"].items() if v.get("delivery_cpu_us")}
    if delivery:
        note += "\ndelivery thread's CPU time per frame (us, median and p10-p90 over runs): " + ", ".join(
            f"{n} {d['median']:.0f} ({d['p10']:.0f}-{d['p90']:.0f})" for n, d in delivery.items())
    if "nf:hooks" in names:  # the breakdown: what each stage adds to the median step
        step = [o["variants"][n]["step_ms"]["median"] for n in names]
        note += "\nadded per token by each stage (step ms): " + ", ".join(
            f"{n} {b - a:+.3f}" for n, a, b in zip(names[1:], step, step[1:]))
    return head + "\n" + _table(header, rows) + "\n" + note


def frame_table(f: dict) -> str:
    rows = []
    for name, t in f["us_per_frame"].items():
        ratio = f["ratio_to_eager"].get(name)
        rows.append([name, f"{t['median']:.1f}", f"{t['p10']:.1f}-{t['p90']:.1f}",
                     f"{ratio['median']:.3f}" if ratio else "1 (reference)",
                     f"{f['first_call_s'][name]:.2f}"])
    head = (f"Frame operation {f['shape'][0]}x{f['shape'][1]} -> uint8, {f['device']}, {f['timing']}, "
            f"{f['rounds']} rounds x {f['iters']} calls; pixels equal to eager: {f['pixels_equal_to_eager']}")
    return head + "\n" + _table(["implementation", "us/frame", "p10-p90", "ratio to eager", "first call s"], rows)


def memory_table(m: dict) -> str:
    rows = []
    for name in ("none", "neuralflow"):
        r = m[name]
        row = [name, f"{r['rss_before_mib']:.1f}", f"{r['rss_mib'][0]:.1f}", f"{r['rss_mib'][-1]:.1f}",
               f"{r['rss_slope_mib_per_1k_tokens']:+.3f}"]
        if "cuda_peak_mib" in r:
            row += [f"{r['cuda_peak_mib']:.1f}", f"{r['cuda_slope_mib_per_1k_tokens']:+.3f}"]
        rows.append(row)
    header = ["run", "RSS before MiB", "first MiB", "last MiB", "slope MiB/1k tok"]
    if "cuda_peak_added_mib" in m:
        header += ["CUDA peak MiB", "CUDA slope MiB/1k tok"]
    head = (f"Memory over {m['tokens']} tokens ({m['tokens'] // m['chunk']} generate calls of {m['chunk']}); "
            f"RSS added by capture {m['rss_added_mib']:+.1f} MiB"
            + (f", CUDA peak added {m['cuda_peak_added_mib']:+.1f} MiB" if "cuda_peak_added_mib" in m else "")
            + (f"; RSS slope over none {m['rss_slope_over_none_mib_per_1k_tokens']:+.3f} (flat below "
               f"{m['flat_threshold_mib_per_1k_tokens']})" if "rss_slope_over_none_mib_per_1k_tokens" in m else "")
            + f"; flat: {m['flat']}")
    return head + "\n" + _table(header, rows)


def hooks_table(h: dict) -> str:
    rows = [[way, f"{t['median']:.1f}", f"{t['p10']:.1f}-{t['p90']:.1f}"] for way, t in h["us_per_token"].items()]
    frames = h.get("engine_frames", {})
    head = (f"Capture hooks per eager decode token ({h['layers']} layers x {h['hidden']}, {h['device']} "
            f"{h['dtype']}; bare: no hooks, held and copied: hooks only, engine: all the Engine does), {h['rounds']} "
            f"alternating rounds x {h['tokens']} tokens; held / copied "
            f"{' '.join(_ratio_cells(h['ratio_held_to_copied']))}; same staging: {h['same_staging']}"
            + (f"; engine - bare {h['engine_over_bare_us']['median']:.1f} us per token"
               if h.get("engine_over_bare_us") else "")
            + (f"; engine frames delivered {frames['delivered']}/{frames['captured']}" if frames else ""))
    return head + "\n" + _table(["way", "us/token", "p10-p90"], rows)


FORMATTERS = {"overhead": overhead_table, "frame_op": frame_table, "memory": memory_table,
              "hooks": hooks_table}


def tables(result: dict, checks: dict | None = None) -> str:
    """All sections of `result` that have a formatter (or an error), as text.

    checks: {overhead section key: goal limit or None}: those sections get overhead_checks'
    lines under their table (the CPU suite's; the GPU script states its goals apart)."""
    env = result.get("environment", {})
    parts = [f"neuralflow bench  {env.get('date', '')}  torch {env.get('torch')}  "
             f"transformers {env.get('transformers')}  {env.get('gpu') or env.get('cpu')} "
             f"({env.get('cpu_cores')} cores, load {env.get('load_average')})"]
    for key, section in result.items():
        name = key.split(":")[0]
        if not isinstance(section, dict) or key == "environment":
            continue
        if "error" in section:
            parts.append(f"[{key}] failed: {section['error'].strip().splitlines()[-1]}")
        elif name in FORMATTERS:
            try:
                text = FORMATTERS[name](section)
                if key in (checks or {}) and "neuralflow" in section.get("variants", {}):
                    text += "\n" + overhead_checks(section, checks[key])
                parts.append(f"[{key}]\n" + text)
            except (KeyError, TypeError, ValueError) as err:
                parts.append(f"[{key}] (cannot format: {err!r})")
    return "\n\n".join(parts)
