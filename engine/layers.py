"""Find the decoder layers of a Hugging Face causal LM (unmodified) and its hidden size.

Families covered by the paths below, each tested on a tiny model (tests/test_engine.py, frames
checked against transformers' own hidden states): Mistral, Mixtral, Llama, Qwen2, Qwen2-MoE,
Qwen3, Gemma, Gemma2, Gemma3 text, Phi, Phi-3, OLMo2, Starcoder2 (model.layers), GPT-2, GPT-J,
Falcon, Bloom (transformer.h), GPT-NeoX/Pythia (gpt_neox.layers), OPT (model.decoder.layers),
MPT (transformer.blocks), and multimodal wrappers such as LLaVA fed text
(model.language_model.layers). PEFT wrappers are unwrapped first.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.blocks",
    "transformer.layers",
    "gpt_neox.layers",
)


class UnsupportedModel(TypeError):
    """The engine cannot find the decoder layers of this model."""


def _get(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model under a PEFT or similar wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: torch.nn.Module) -> tuple[str, list[torch.nn.Module]]:
    """(path, layers) of the model's decoder stack, or UnsupportedModel naming what was tried."""
    base = unwrap(model)
    for path in LAYER_PATHS:
        found = _get(base, path)
        if isinstance(found, torch.nn.ModuleList) and len(found) > 0:
            return path, list(found)
    raise UnsupportedModel(
        f"neuralflow cannot find the decoder layers of {type(base).__name__}: looked for a "
        f"non-empty nn.ModuleList at {', '.join(LAYER_PATHS)}")


def hidden_size(model: torch.nn.Module) -> int:
    """The width of the residual stream, from the (text) config."""
    config = unwrap(model).config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModel(f"{type(config).__name__} has no hidden_size, n_embd or d_model")


def residual_streams(model: torch.nn.Module) -> str | None:
    """How the model's decoder layers return several residual streams, from its (text) config:
    "hyper" for hyper-connections (DeepSeek V4 and its kin: config.hc_mult, [batch, seq,
    streams, hidden]), else None (one stream; Gemma 3n's AltUp is told by its shape)."""
    config = unwrap(model).config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return "hyper" if getattr(config, "hc_mult", None) else None


def layer_output(output, streams: str | None = None) -> torch.Tensor:
    """The hidden states [batch, seq, hidden] a decoder layer returned: a tensor in
    transformers 5, the first item of a tuple in 4.x. Several residual streams become one:
    hyper-connections' [batch, seq, streams, hidden] (streams="hyper", see residual_streams)
    by their mean, the one stream they all share at the embeddings; Gemma 3n's [streams,
    batch, seq, hidden] (AltUp) by stream 0, the active one (altup_active_idx), the one the
    layer computes on (the others are its predictions)."""
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if hidden.dim() != 4:
        return hidden
    return hidden.mean(dim=2) if streams == "hyper" else hidden[0]


def module_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: the execution device accelerate's hook gives it (device_map
    dispatch; an offloaded module's parameters wait on "meta" until its forward), else where
    its first parameter or buffer with data lives, else the CPU."""
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        device = getattr(part, "execution_device", None)
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and device.index is None:  # as a tensor there would say
                device = torch.device("cuda", torch.cuda.current_device())
            return device
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def model_name(model: torch.nn.Module) -> str:
    """The folder or hub name the model was loaded from, else its class name."""
    base = unwrap(model)
    return getattr(getattr(base, "config", None), "_name_or_path", "") or type(base).__name__


class _Enough(Exception):
    """Raised by typical_scale's last hook: the rest of the forward (norm, logits) is not needed."""


def typical_scale(model: torch.nn.Module, input_ids: torch.Tensor, quantile: float = 0.99,
                  skip: int = 1, limit: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """A picture scale from the model's own values, for norm="reference": per layer, lo 0 and
    hi the `quantile` of |output| over the positions of input_ids[0] after the first `skip`
    (a first token's outliers would set it) and at most the last `limit` (fewer where
    torch.quantile's 2^24 values would not hold them). One forward, up to the last layer.

    The seed's scale (mean -/+ 25 x variance) suits Mistral 7B's small residual values; models
    with larger ones (most small models; layers with a few huge dims) come out one flat colour
    under it, while this scale shows their structure and keeps frames comparable."""
    _, layers = decoder_layers(model)
    hi: list = [None] * len(layers)
    limit = max(1, min(limit, 2**24 // hidden_size(model)))
    streams = residual_streams(model)

    def hook_for(i):
        def hook(module, args, output):
            x = layer_output(output, streams)[0]
            x = x[min(skip, x.shape[0] - 1):][-limit:]  # one position at least
            hi[i] = torch.quantile(x.detach().abs().float().flatten(), quantile)
            if i == len(layers) - 1:
                raise _Enough
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _Enough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    top = torch.stack([h.to(hi[-1].device) for h in hi])
    return torch.zeros_like(top), top


@contextlib.contextmanager
def last_token_outputs(model: torch.nn.Module, row: int = 0):
    """Record, per forward, the [layers, hidden] float32 outputs of every decoder layer at the
    last token of batch `row` (a list that grows inside the block). Plain hooks that clone:
    for probes and reference checks, not the engine's allocation-free hot path."""
    _, layers = decoder_layers(model)
    rows: list = [None] * len(layers)
    steps: list = []
    streams = residual_streams(model)

    def hook_for(i):
        def hook(module, args, output):
            rows[i] = layer_output(output, streams)[row, -1].detach().float().clone()
            if i == len(layers) - 1:  # on the last layer's device (a model may span several)
                steps.append(torch.stack([r.to(rows[-1].device) for r in rows]))
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield steps
    finally:
        for handle in handles:
            handle.remove()
