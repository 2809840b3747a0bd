"""`neuralflow generate`: load a local Hugging Face causal LM, generate, stream one frame per token.

    neuralflow generate --model ~/models/Mistral-7B-v0.1 --prompt "The capital of France is" \
        --max-new-tokens 64 --dtype bfloat16 --device cuda
    neuralflow view                       # in another terminal (or another machine, via SSH tunnel)

Tokens are printed as they are generated; frames go out on --publish (default
tcp://127.0.0.1:5555) to any viewer, one per forward pass: the prefill, then one per new token.
Attention: flash_attention_2 when flash-attn imports (and the model is 16-bit, on CUDA, and
supports it), else sdpa, else eager; the choice is printed. `pick_attention` makes that choice
and is what the tests check.

Errors a user can fix (no such folder, not a causal LM, unknown device, ...) raise UserError
with one line; the CLI prints it and exits 2.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TextStreamer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from neuralflow.engine.capture import Engine
from neuralflow.engine.layers import (UnsupportedModel, decoder_layers, hidden_size, module_device,
                                      typical_scale)
from neuralflow.engine.render import fused_by_default, square_width
from neuralflow.viewer.cli import UserError

ATTENTIONS = ("flash_attention_2", "sdpa", "eager")
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a broken build that fails on import
        return False
    return True


def pick_attention(requested: str | None, device: str = "cpu", dtype: str = "auto",
                   model_class: type | None = None) -> tuple[str, str]:
    """(attn_implementation, one line saying which and why).

    requested None: flash_attention_2 when flash-attn imports, the device is CUDA, the weights
    are known to be 16-bit (`dtype`: what they load in) and `model_class` supports it; else sdpa, or eager
    for a class without sdpa (Bloom, MPT). requested flash_attention_2 where it cannot run: that
    fallback, and the line says why. Anything else is used as asked.
    """
    if requested not in (None, "flash_attention_2"):
        return requested, f"attention: {requested} (as asked)"
    supports = lambda flags: model_class is None or any(getattr(model_class, f, False) for f in flags)
    name = model_class.__name__ if model_class else "the model"
    why = None
    if not flash_attn_available():
        why = "flash-attn is not installed"
    elif not (device.startswith("cuda") or device == "auto"):
        why = f"flash-attn needs a CUDA device, not {device}"
    elif dtype not in ("bfloat16", "float16"):
        why = (f"flash-attn needs float16 or bfloat16, not {dtype}" if dtype != "auto"
               else "flash-attn needs 16-bit weights, and this checkpoint does not say its dtype")
    elif not supports(("_supports_flash_attn", "_supports_flash_attn_2")):  # (transformers 4.x name)
        why = f"{name} does not support flash-attn"
    if why is None:
        return "flash_attention_2", "attention: flash_attention_2 (flash-attn found)"
    fallback = "sdpa" if supports(("_supports_sdpa",)) else "eager"
    if fallback == "eager":
        why += f"; {name} does not support sdpa"
    if requested == "flash_attention_2":
        return fallback, f"attention: {fallback}, not flash_attention_2: {why}"
    return fallback, f"attention: {fallback} ({why})"


def _weights_dtype(config, dtype: str) -> str:
    """The dtype from_pretrained(dtype=...) will load the weights in, by name ("auto": the
    checkpoint's config does not say)."""
    if dtype != "auto":
        return dtype
    saved = config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)  # 4.x
    return str(saved).removeprefix("torch.") if saved else "auto"


def _pick_device(device: str | None, device_map: str | None) -> str:
    if device and device_map:
        raise UserError("use either --device or --device-map, not both")
    if device_map:
        return "auto"
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (try cpu, cuda, cuda:1, mps)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here")
    return device


def load(path: str | Path, *, dtype: str = "auto", device: str | None = None, device_map: str | None = None,
         attn: str | None = None, say=print):
    """(model, tokenizer) from a local folder, in eval mode, on the chosen device."""
    path = Path(path)
    where = _pick_device(device, device_map)
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"{path} is not a model folder transformers can read: {_first_line(err)}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"{path} holds a {config.model_type!r} model, which is not a causal language model")
    try:  # before the weights, which may take minutes to load
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"no usable tokenizer in {path} (tokenizer.json or the model's tokenizer files): "
                        f"{_first_line(err)}") from None
    implementation, line = pick_attention(attn, where, _weights_dtype(config, dtype),
                                          MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    say(line)
    kwargs = dict(dtype=DTYPES[dtype], attn_implementation=implementation)
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"cannot load the model in {path}: {_first_line(err)}") from None
    if not device_map:
        model.to(where)
    return model.eval(), tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def run(args, publisher) -> int:
    """The `generate` command. `publisher` (bound by the CLI before the slow imports) or None."""
    say = lambda line: print(f"neuralflow generate: {line}", file=sys.stderr, flush=True)
    # before the weights load; the parser takes any float, and -1 or nan would quietly run greedy
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0 is greedy), not {args.temperature}")
    model, tokenizer = load(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                            attn=args.attn, say=say)
    device = module_device(model)  # not model.device: with device_map offload that may be "meta"
    # (token type ids mean nothing to a causal LM, and transformers 4.x's generate refuses them)
    inputs = tokenizer(args.prompt, return_tensors="pt", return_token_type_ids=False).to(device)
    prompt_length = inputs["input_ids"].shape[1]
    if prompt_length == 0:
        raise UserError("the prompt is empty after tokenization")
    sampling = dict(do_sample=False)
    if args.temperature > 0:
        sampling = dict(do_sample=True, temperature=args.temperature)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        width = args.width or square_width(len(decoder_layers(model)[1]), hidden_size(model))
        norm, reference = args.norm, None
        if norm == "prompt":  # one forward of the prompt first, for the picture's fixed scale
            norm, reference = "reference", typical_scale(model, inputs["input_ids"])
            say("picture scale from the prompt: per layer, lo 0, hi the 99th percentile of |x|")
        # 64 ring slots (8 MiB of 7B frames): a delivery thread starved of the GIL for a few
        # tokens catches up instead of dropping their frames
        engine = Engine(model, width=width, layout=args.layout, norm=norm, reference=reference,
                        tokenizer=tokenizer, on_frame=publisher.publish if publisher else None,
                        label=Path(args.model).name, slots=64)
    except (UnsupportedModel, ValueError) as err:  # an unknown architecture, a width too narrow
        raise UserError(str(err)) from None
    if fused_by_default(device):
        say("compiling the frame math for this model's shape (once per process, a few seconds)")
    with engine:
        if publisher is not None and args.wait_viewer:
            say(f"waiting up to {args.wait_viewer:g} s for a viewer on {publisher.endpoint}")
            if not publisher.wait_for_subscribers(1, args.wait_viewer):
                say("no viewer connected; generating anyway")
        started = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, pad_token_id=pad,
                                streamer=TextStreamer(tokenizer), **sampling)
        seconds = time.perf_counter() - started
    new = output.shape[1] - prompt_length
    stats = engine.stats
    sent = f", {publisher.stats['published']} published on {publisher.endpoint}" if publisher else ""
    say(f"{new} new tokens in {seconds:.2f} s ({1000 * seconds / max(new, 1):.1f} ms/token); "
        f"{stats['captured']} frames captured, {stats['dropped']} dropped{sent}")
    if engine.error is not None:
        say(f"capture stopped early: {engine.error!r}")
    return 0
