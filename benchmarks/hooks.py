"""The capture hooks alone: host time per token of the Engine's start hook and its layer hooks
(frame math and shipping switched off), in an eager decode step, two ways, interleaved:
  held    what the Engine does: each layer's output is held and all are copied at once
  copied  what it did before (and still does in prefill and compiled code): one copy per layer

    from neuralflow.benchmarks.hooks import measure_token_hooks
    measure_token_hooks(layers=32, hidden=4096, device="cpu")    # Mistral-7B's shape

The hooks belong to an Engine on a Mistral with the real layer count and hidden size but one
8-wide head and an 8-wide MLP (the model never runs: only its layers' output shape matters).
They get random [1, 1, hidden] outputs in `dtype`, as in a decode step. On CUDA the device is
synchronized at the end of each timed block, so a block takes max(host, device) time.
"""

from __future__ import annotations

import time

import torch

from neuralflow.benchmarks.overhead import _PartialEngine, spread

WAYS = ("held", "copied")


def thin_mistral(layers: int, hidden: int, device="cpu", dtype=torch.bfloat16) -> torch.nn.Module:
    """A Mistral whose layers output [batch, seq, hidden] with almost no weights behind them."""
    import transformers

    config = transformers.MistralConfig(vocab_size=64, hidden_size=hidden, intermediate_size=8,
                                        num_hidden_layers=layers, num_attention_heads=1,
                                        num_key_value_heads=1, head_dim=8)
    with torch.device(device):
        return transformers.MistralForCausalLM(config).to(dtype).eval()


def measure_token_hooks(layers: int = 32, hidden: int = 4096, device="cpu", dtype=torch.bfloat16, *,
                        tokens: int = 50, rounds: int = 40, progress=None) -> dict:
    """Microseconds per token for each way, and held / copied per round (A B, B A, ...)."""
    device = torch.device(device)
    engine = _PartialEngine(thin_mistral(layers, hidden, device, dtype), "hooks")
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(1, 1, hidden, generator=g).to(device, dtype) for _ in range(layers)]
    ids, cache = torch.tensor([[5]], device=device), object()  # one known cache: decode steps

    def token():
        engine._start((ids,), {"past_key_values": cache})
        for hook, output in zip(engine._layer_hooks, outputs):
            hook(None, None, output)

    def block(way: str) -> float:
        engine._one_device = way == "held"  # False: the per-layer copies, as for a split model
        start = time.perf_counter()
        for _ in range(tokens):
            token()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # sync point: end of a timed block
        return (time.perf_counter() - start) / tokens

    per_token = {way: [] for way in WAYS}
    staged = {}
    engine.attach()
    try:
        with torch.no_grad():
            for way in WAYS:
                block(way)  # warm-up
                staged[way] = engine._staging.clone()
            for r in range(rounds):
                for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                    per_token[way].append(block(way))
                if progress and (r + 1) % max(1, rounds // 3) == 0:
                    progress(f"  hooks round {r + 1}/{rounds}: " + ", ".join(
                        f"{w} {1e6 * t[-1]:.0f}" for w, t in per_token.items()) + " us per token")
    finally:
        engine.detach()
    return {"layers": layers, "hidden": hidden, "device": str(device), "dtype": str(dtype).split(".")[-1],
            "tokens": tokens, "rounds": rounds,
            "us_per_token": {w: spread([1e6 * t for t in v]) for w, v in per_token.items()},
            "ratio_held_to_copied": spread([a / b for a, b in zip(per_token["held"], per_token["copied"])]),
            "same_staging": bool(torch.equal(staged["held"], staged["copied"]))}
