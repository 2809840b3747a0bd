"""Random-weight Mistral models for the benchmarks, built from a config (no downloads).

    from neuralflow.benchmarks.models import PRESETS, build, prompt_ids
    model = build(PRESETS["ci"], device="cpu")          # 8 layers x 1024 hidden, sdpa
    ids = prompt_ids(model, length=16)

Presets: "mistral-7b" is the MistralConfig defaults (32 layers, 4096 hidden, 14336 MLP, 32 heads,
8 KV heads, 32000 vocab); "ci" is the CPU suite's small model; "tiny" is for tests and for
dry runs of the GPU script on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int = 32000
    max_positions: int = 4096

    @property
    def shape(self) -> tuple[int, int]:
        """The [layers, hidden] states one frame is rendered from."""
        return self.layers, self.hidden


PRESETS = {
    "mistral-7b": Preset(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8),
    "ci": Preset(layers=8, hidden=1024, intermediate=3584, heads=16, kv_heads=4),
    "tiny": Preset(layers=4, hidden=128, intermediate=256, heads=4, kv_heads=2, vocab=512),
}


def build(preset: Preset, device: str = "cpu", dtype: torch.dtype = torch.float32,
          seed: int = 0) -> torch.nn.Module:
    """A MistralForCausalLM with random weights, sdpa attention, in eval mode on `device`."""
    import transformers

    config = transformers.MistralConfig(
        vocab_size=preset.vocab, hidden_size=preset.hidden, intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads, max_position_embeddings=preset.max_positions,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in `dtype` directly: no float32 copy of a 7B model
    try:
        with torch.device(device):
            model = transformers.MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def prompt_ids(model: torch.nn.Module, length: int = 16, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Random token ids [batch, length] on the model's device (never the special ids 0..2)."""
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    return ids.to(next(model.parameters()).device)


def greedy_kwargs(new_tokens: int) -> dict:
    """generate() arguments for exactly `new_tokens` greedy tokens (no early stop on EOS)."""
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=0)
