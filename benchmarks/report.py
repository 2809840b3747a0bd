"""Benchmark results as text tables and JSON, with the machine and versions they came from.

    from neuralflow.benchmarks.report import environment, tables, write_json
    result = {"environment": environment(), "overhead": ..., "frame_op": ..., "memory": ...}
    print(tables(result))
    write_json(result, "bench.json")

Every section is optional; one holding {"error": ...} is printed as that error.
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


def overhead_table(o: dict) -> str:
    c = o["config"]
    rows = []
    for name, v in o["variants"].items():
        rows.append([name, f"{v['per_token_ms']['median']:.2f}", *_ratio_cells(v["ratio"]),
                     f"{v['step_ms']['median']:.2f}", *_ratio_cells(v["step_ratio"]),
                     f"{v['fastest_step_ratio']:.3f}", f"{v['cpu_ms']['median']:.2f}",
                     *_ratio_cells(v["cpu_ratio"])[:2]])
    head = (f"Per-token cost inside generate: {c['new_tokens']} new tokens, {c['reps']} interleaved reps "
            f"(+{c['warmup']} warm-up), {c['device']} {c['dtype']}"
            + (f", {c['generate_kwargs']}" if c.get("generate_kwargs") else ""))
    note = ("wall: whole call / tokens; step: median decode-step interval (+ rendering after generate).\n"
            "ratio: to the adjacent 'none' runs (median, IQR, p10-p90); the 'none' row is the noise "
            "floor (each none run over the previous one).\nfastest: fastest step rep over the fastest "
            "'none' step rep (interference only adds time).\ncpu: the generating thread's CPU time "
            "per token (blind to preemption and GIL waits), its ratio to the adjacent 'none' runs and IQR.")
    if c.get("step_clock") is False:
        note += "\nstep here: the whole generate call per token, as wall (no step clock in compiled code)."
    header = ["variant", "wall ms/tok", "ratio", "IQR", "p10-p90", "step ms", "ratio", "IQR", "p10-p90",
              "fastest", "cpu ms", "ratio", "IQR"]
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


def tables(result: dict) -> str:
    """All sections of `result` that have a formatter (or an error), as text."""
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
                parts.append(f"[{key}]\n" + FORMATTERS[name](section))
            except (KeyError, TypeError, ValueError) as err:
                parts.append(f"[{key}] (cannot format: {err!r})")
    return "\n\n".join(parts)
