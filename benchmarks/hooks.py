"""The Engine's own work per token, with no model run around it: host time per eager decode
token of stand-in modules that return fixed layer outputs, called as a decoder calls its
layers, four ways, interleaved:
  bare    the stand-ins with no hooks: what any forward pays for these module calls
  held    with the Engine's hooks (frame math and shipping switched off), as the Engine does
          it: each layer's output is held and all are copied at once
  copied  the same, as it did before (and still does in prefill and compiled code): one copy
          per layer
  engine  everything the Engine adds to the generating thread: held, plus the frame math (a
          CUDA graph replay on CUDA) and shipping to the pinned ring at the model's end hook,
          with the delivery thread running and handing frames to a no-op sink (the ring has a
          slot per token of a block, so nothing is dropped; the block's frames are delivered
          before the next block starts, untimed)
The hooks run through torch's module-call path, so their dispatch counts (a module with hooks
takes the slow path of `Module.__call__`). "engine" minus "bare" (per round) divided by a
decode step's time is the Engine's direct cost, free of the run-to-run noise of timing whole
generate calls (overhead.py); it leaves out what the Engine costs indirectly (the delivery
thread's turns at the GIL while the model runs, cache effects).

    from neuralflow.benchmarks.hooks import measure_token_hooks
    measure_token_hooks(layers=32, hidden=4096, device="cpu")    # Mistral-7B's shape

The Engine belongs to a Mistral with the real layer count and hidden size but one 8-wide head
and an 8-wide MLP (it never runs: only its shape matters to the Engine). The stand-ins return
random [1, 1, hidden] outputs in `dtype`, as in a decode step. On CUDA the device is
synchronized at the end of each timed block, so a block takes max(host, device) time.
"""

from __future__ import annotations

import time

import torch

from neuralflow.benchmarks.overhead import _PartialEngine, spread

WAYS = ("bare", "held", "copied", "engine")


def thin_mistral(layers: int, hidden: int, device="cpu", dtype=torch.bfloat16) -> torch.nn.Module:
    """A Mistral whose layers output [batch, seq, hidden] with almost no weights behind them."""
    import transformers

    config = transformers.MistralConfig(vocab_size=64, hidden_size=hidden, intermediate_size=8,
                                        num_hidden_layers=layers, num_attention_heads=1,
                                        num_key_value_heads=1, head_dim=8)
    with torch.device(device):
        return transformers.MistralForCausalLM(config).to(dtype).eval()


class _Cache:
    """Stands in for a transformers Cache object: the same one at every decode step."""


class _Returns(torch.nn.Module):
    """A stand-in decoder layer that returns a fixed output."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, hidden):
        return self.output


class _Stack(torch.nn.Module):
    """A stand-in model that calls its layers in turn, as a decoder does."""

    def __init__(self, outputs):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Returns(o) for o in outputs)

    def forward(self, input_ids, past_key_values=None):
        hidden = None
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def measure_token_hooks(layers: int = 32, hidden: int = 4096, device="cpu", dtype=torch.bfloat16, *,
                        tokens: int = 50, rounds: int = 40, progress=None) -> dict:
    """Microseconds per token for each way, engine - bare and held / copied per round (the
    ways' order reversed every round)."""
    device = torch.device(device)
    engine = _PartialEngine(thin_mistral(layers, hidden, device, dtype), "hooks", slots=tokens + 2)
    engine._check_fresh = lambda frame: None  # the stand-ins return the same states every token
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(1, 1, hidden, generator=g).to(device, dtype) for _ in range(layers)]
    bare, hooked = _Stack(outputs), _Stack(outputs)
    # one known cache object (weakly referable, as transformers' Cache objects are): decode steps
    ids, cache = torch.tensor([[5]], device=device), _Cache()

    def block(way: str) -> float:
        engine._one_device = way != "copied"  # False: the per-layer copies, as for a split model
        engine.upto = "deliver" if way == "engine" else "hooks"
        stack = bare if way == "bare" else hooked
        start = time.perf_counter()
        for _ in range(tokens):
            stack(ids, past_key_values=cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # sync point: end of a timed block
        took = (time.perf_counter() - start) / tokens
        _drain(engine)
        return took

    per_token = {way: [] for way in WAYS}
    staged = {}
    engine.attach()  # the hooks go on the stand-ins, as attach puts them on a model's modules
    handles = [hooked.register_forward_pre_hook(engine._start_hook, with_kwargs=True),
               *(layer.register_forward_hook(hook) for layer, hook in zip(hooked.layers, engine._layer_hooks)),
               hooked.register_forward_hook(engine._end_hook)]
    try:
        with torch.no_grad():
            for way in WAYS:
                block(way)  # warm-up
                staged[way] = engine._staging.clone()
            if engine._step < tokens:
                raise RuntimeError(f"the stand-in tokens were not counted as decode steps ({engine._step})")
            for r in range(rounds):
                for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                    per_token[way].append(block(way))
                if progress and (r + 1) % max(1, rounds // 3) == 0:
                    progress(f"  hooks round {r + 1}/{rounds}: " + ", ".join(
                        f"{w} {1e6 * t[-1]:.0f}" for w, t in per_token.items()) + " us per token")
    finally:
        for handle in handles:
            handle.remove()
        engine.detach()
    return {"layers": layers, "hidden": hidden, "device": str(device), "dtype": str(dtype).split(".")[-1],
            "tokens": tokens, "rounds": rounds,
            "us_per_token": {w: spread([1e6 * t for t in v]) for w, v in per_token.items()},
            "engine_over_bare_us": spread([1e6 * (a - b) for a, b in zip(per_token["engine"], per_token["bare"])]),
            "ratio_held_to_copied": spread([a / b for a, b in zip(per_token["held"], per_token["copied"])]),
            "same_staging": bool(torch.equal(staged["held"], staged["copied"])),
            "engine_frames": {k: engine.stats[k] for k in ("captured", "delivered", "dropped")}}


def _drain(engine, timeout: float = 30.0) -> None:
    """Wait until the delivery thread has handed on every frame shipped so far."""
    give_up = time.monotonic() + timeout
    stats = engine.stats
    while stats["delivered"] + stats["dropped"] < stats["captured"]:
        if time.monotonic() > give_up or engine.error is not None:
            raise RuntimeError(f"frames not delivered after {timeout} s: {stats} {engine.error!r}")
        time.sleep(0.001)
