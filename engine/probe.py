"""Watch a fine-tune: fixed probe prompts through the model every N steps, drift against step 0.

    from neuralflow.engine.probe import ProbeCallback
    probe = ProbeCallback({"fox": "The quick brown fox"}, tokenizer=tok, every=50,
                          publish="tcp://127.0.0.1:5555", recording="run.nfrec", export="timeline")
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    probe.attach(trainer)          # or Trainer(..., callbacks=[probe]); see "Logs" below
    trainer.train()

    with Prober(model, ["The quick brown fox"], tokenizer=tok) as prober:   # a plain loop
        for step, batch in enumerate(loader):
            if step % 50 == 0:
                prober.probe(step)                # -> {"drift/probe0/layer_00": ..., ...}
            ...forward, backward, optimizer step...

A probe runs each prompt once through the model (eval mode, no grad, use_cache=False) and
takes every decoder layer's output at the last token, as the engine does. Afterwards every
module's train flag and the python, numpy, torch CPU and CUDA RNG states are restored; no
gradient or optimizer state is touched, so training goes on bit for bit as without probes.

Frames: one stream per probe prompt (its own session id and seq numbers, meta "label" and
"probe" = the prompt's name, Frame.step = the training step). They are published on one
endpoint (or `publish` as a list: one endpoint per prompt), appended to `recording`, and kept
in `Prober.frames[name]` for export. norm="reference" (default) freezes each prompt's picture
scale to its step-0 seed statistics (or to `reference=`), so change stays visible.

Drift of layer l at step s, on the raw float32 states x (not the pixels, so it does not
saturate and does not depend on the palette or the norm mode):
    drift[l] = mean_i |x_s[l, i] - x_0[l, i]| / std_i(x_0[l, i])
i.e. the mean absolute change in units of the layer's own step-0 spread. The drift "jumps" at
the first layer l > 0 with drift[l] >= floor and drift[l] >= factor * max(drift[:l]): layers
below it moved less than 1/factor as much. When no such layer exists but layer 0 moved at least
floor, it is layer 0 (everything moved; in a full fine-tune layer 0 always moves a little, so it
must not hide a jump higher up). A warning names that layer whenever it changes
(`Prober.jumps` keeps them).

Logs: at each probe step the callback makes the Trainer log (on every rank: logging gathers
the loss across ranks) and adds drift/<probe>/layer_NN, drift/<probe>/mean and
drift/<probe>/jump_layer (-1: none) to those logs and to state.log_history. Reporters
(TensorBoard, W&B) only see the added keys when the callback runs before them:
`probe.attach(trainer)` puts it there; `callbacks=[probe]` puts it after them (the Trainer
appends user callbacks last), which still reaches log_history and the console. attach() on a
trainer that already has the callback moves it ahead instead of adding it twice.

Distributed: ranks="0" (default) probes on global rank 0 only; ranks="all" probes on every
rank, frames carry Frame.rank and "rank N" in the label, rank N publishes on the endpoint's
port + N and records to <stem>.rankN<suffix>. Models sharded across ranks (FSDP, ZeRO-3)
need ranks="all", since every rank must join each forward.

`export=DIR` writes each prompt's frames with neuralflow.viewer.record.export_timeline (PNGs
with the step drawn on each, a looping 15 fps GIF). engine/train_demo.py backs
`neuralflow demo --train`. Tests: `python -m pytest tests/test_probe.py`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import numbers
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from neuralflow.engine.layers import (decoder_layers, hidden_size, last_token_outputs, model_name,
                                      module_device)
from neuralflow.engine.render import check_options, render, seed_stats
from neuralflow.viewer.frame import Frame
from neuralflow.viewer.record import EXPORT_MODES, export_timeline
from neuralflow.viewer.wire import new_session_id

try:
    from transformers import TrainerCallback
except ImportError:  # the Prober works without transformers' Trainer
    TrainerCallback = object

log = logging.getLogger("neuralflow")


# ---- probing without side effects ----------------------------------------------------------

@contextlib.contextmanager
def untouched(model: torch.nn.Module):
    """Eval mode and no grad inside; afterwards every module's train flag and the python,
    numpy, torch CPU and CUDA RNG states are as they were."""
    modes = [(module, module.training) for module in model.modules()]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
           torch.cuda.get_rng_state_all() if cuda else None)
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        model.train(modes[0][1])  # through train(): a model's override (kernels) sees the change back
        for module, training in modes:
            module.training = training
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda:
            torch.cuda.set_rng_state_all(rng[3])


def last_token_states(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """float32 [layers, hidden] on the CPU: each decoder layer's output at the last token of
    input_ids[0], from one forward (call it inside `untouched`)."""
    with last_token_outputs(model) as steps:
        model(input_ids=input_ids, use_cache=False)
    return steps[-1].cpu()  # sync point: once per probe prompt, off the hot path


def layer_drift(states: torch.Tensor, start: torch.Tensor) -> np.ndarray:
    """float64 [layers]: mean |x - x0| / std(x0) per layer (see the module docstring)."""
    x, x0 = states.double(), start.double()
    return ((x - x0).abs().mean(dim=1) / x0.std(dim=1).clamp_min(1e-12)).numpy()


def first_jump(drift, factor: float = 3.0, floor: float = 0.1) -> int | None:
    """The first layer above layer 0 whose drift is >= floor and >= factor x every layer below
    it; else 0 if layer 0's drift is >= floor (everything moved); else None. Non-finite drift
    (NaN, inf) counts as infinite."""
    d = np.nan_to_num(np.asarray(drift, np.float64), nan=np.inf, posinf=np.inf)
    for layer in range(1, len(d)):
        if d[layer] >= floor and d[layer] >= factor * d[:layer].max():
            return layer
    return 0 if len(d) and d[0] >= floor else None


def distributed_rank() -> tuple[int, int]:
    """(global rank, world size) from torch.distributed, else from RANK/WORLD_SIZE, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _offset_port(endpoint: str, by: int) -> str:
    match = re.fullmatch(r"(tcp://.+:)(\d+)", endpoint)
    return f"{match[1]}{int(match[2]) + by}" if match and by else endpoint


def _named(prompts) -> dict:
    """{name: prompt} from the forms Prober takes; an empty collection is refused here, at
    construction, rather than probing nothing all run long."""
    if isinstance(prompts, Mapping) and "input_ids" in prompts:  # a tokenizer's output: one prompt
        prompts = prompts["input_ids"]
    if isinstance(prompts, Mapping):
        named = dict(prompts)
    else:
        ids = isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], numbers.Integral)
        if ids or isinstance(prompts, (str, torch.Tensor, np.ndarray)):  # one prompt
            prompts = [prompts]
        named = {f"probe{k}": p for k, p in enumerate(prompts)}
    if not named:
        raise ValueError(f"no probe prompts: got an empty {type(prompts).__name__}")
    return named


def _check_options(width, layout, norm, ranks) -> None:
    """ValueError for options Prober cannot probe with."""
    if ranks not in ("0", "all"):
        raise ValueError(f'ranks must be "0" or "all", got {ranks!r}')
    check_options(width, layout, norm)


def _file_stems(names) -> dict:
    """{name: file stem} for the export: the name with what is no file name made "_". Two
    names that come out the same would overwrite each other's files: a ValueError names them."""
    stems = {}
    for name in names:
        stem = re.sub(r"[^\w.-]+", "_", str(name))
        clash = next((other for other, s in stems.items() if s == stem), None)
        if clash is not None:
            raise ValueError(f"probe names {clash!r} and {name!r} both export as {stem!r}: rename one")
        stems[name] = stem
    return stems


# ---- the prober ------------------------------------------------------------------------------

class Prober:
    """Probe `model` with fixed prompts on demand: `probe(step)` (see the module docstring).

    prompts: a str, token ids, or a list or {name: prompt} dict of them (names default to
    probe0, probe1, ...). tokenizer: turns str prompts into ids. publish: a ZeroMQ endpoint
    (or one per prompt). recording: a .nfrec path. norm, reference, width, layout: as `render`;
    reference (lo, hi) / Picture / Frame overrides the step-0 statistics. label: prefix of
    meta["label"]. rank: global rank (None: detect). ranks: "0" or "all" (who probes).
    factor, floor: the jump rule. keep: hold frames in `frames` for export. wait: seconds to
    wait for a viewer on each endpoint before the first probe (returns as soon as one joins).
    on_frame: callable(Frame) run on every frame this rank probes. strict: raise probe errors instead of disabling probing with one log line.
    """

    def __init__(self, model: torch.nn.Module, prompts, *, tokenizer=None, publish=None,
                 recording=None, norm: str = "reference", reference=None, width: int = 512,
                 layout: str = "bands", label: str = "", rank: int | None = None,
                 world: int | None = None, ranks: str = "0", factor: float = 3.0,
                 floor: float = 0.1, keep: bool = True, wait: float = 0.0, on_frame=None,
                 strict: bool = False):
        _check_options(width, layout, norm, ranks)  # here, not at the first probe (which would disable probing)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # probe the inner module: DDP's forward would start collectives
        self.model = model
        detected = distributed_rank()
        self.rank = detected[0] if rank is None else rank
        self.world = detected[1] if world is None else world
        self.active = ranks == "all" or self.rank == 0
        self.all_ranks = ranks == "all" and self.world > 1
        self.layers = len(decoder_layers(model)[1])
        self.hidden = hidden_size(model)
        self.norm, self.reference, self.width, self.layout = norm, reference, width, layout
        self.factor, self.floor, self.keep, self.strict = factor, floor, keep, strict
        self.on_frame = on_frame
        self.prompts = {name: self._ids(p, tokenizer) for name, p in _named(prompts).items()}
        self.tokenizer = tokenizer
        self.model_name = model_name(model)
        suffix = f" rank {self.rank}" if self.all_ranks else ""
        self.labels = {n: f"{label} {n}{suffix}".strip() for n in self.prompts}
        self.sessions = {n: new_session_id() for n in self.prompts}
        self.seq = {n: 0 for n in self.prompts}
        self.start: dict[str, torch.Tensor] = {}  # step-0 states per prompt
        self.ref: dict[str, tuple] = {}  # frozen lo, hi per prompt
        self.frames: dict[str, list[Frame]] = {n: [] for n in self.prompts}
        self.drift: dict[str, list[tuple[int, np.ndarray]]] = {n: [] for n in self.prompts}
        self.jumps: list[tuple[int, str, int]] = []  # (step, probe, layer) as warned
        self.enabled, self.error = True, None
        self.published = self.recorded = 0  # frames handed to the publishers / the recording
        self.publishers, self.writer = {}, None
        if self.active:
            self._open_sinks(publish, recording)
            for publisher in self._distinct_publishers() if wait > 0 else ():
                publisher.wait_for_subscribers(1, timeout=wait)

    def _ids(self, prompt, tokenizer) -> torch.Tensor:
        if isinstance(prompt, Mapping):  # a tokenizer's output in a list or dict
            if "input_ids" not in prompt:
                raise ValueError(f"a probe prompt that is a mapping needs \"input_ids\", got keys {list(prompt)}")
            prompt = prompt["input_ids"]
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError("str prompts need a tokenizer (or pass token ids)")
            prompt = tokenizer(text=prompt, return_tensors="pt")["input_ids"]  # (a processor too)
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim > 1 and ids.shape[0] > 1:  # rows would run together (and padding with them)
            raise ValueError(f"a probe prompt is one sequence, got a {tuple(ids.shape)} batch: "
                             "pass a list of prompts instead")
        ids = ids.reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("a probe prompt is empty")
        return ids

    @property
    def rank_suffix(self) -> str:
        """".rankN" in the names of this rank's files when every rank probes, else ""."""
        return f".rank{self.rank}" if self.all_ranks else ""

    def _open_sinks(self, publish, recording) -> None:
        from neuralflow.viewer.recording import RecordingWriter
        from neuralflow.viewer.stream import Publisher
        shift = self.rank if self.all_ranks else 0
        if publish and not isinstance(publish, str) and len(publish) != len(self.prompts):
            raise ValueError(f"publish has {len(publish)} endpoints for {len(self.prompts)} prompts")
        try:  # one sink failing to open closes those already open: no port stays bound
            if isinstance(publish, str):
                shared = Publisher(_offset_port(publish, shift))
                self.publishers = {n: shared for n in self.prompts}
            elif publish:
                for name, endpoint in zip(self.prompts, publish):
                    self.publishers[name] = Publisher(_offset_port(endpoint, shift))
            if recording:
                path = Path(recording)
                self.writer = RecordingWriter(path.with_name(path.stem + self.rank_suffix + path.suffix))
        except BaseException:
            self.close()
            raise

    def _distinct_publishers(self) -> list:
        return list({id(p): p for p in self.publishers.values()}.values())

    @property
    def endpoints(self) -> dict[str, str]:
        """The bound endpoint (port resolved) of each prompt's stream."""
        return {n: p.endpoint for n, p in self.publishers.items()}

    def probe(self, step: int) -> dict[str, float]:
        """Probe every prompt at training step `step`; returns the drift metrics for the logs
        ({} on a rank that does not probe, or once probing is disabled by an error)."""
        if not (self.active and self.enabled):
            return {}
        try:
            return self._probe(step)
        except Exception as err:
            if self.strict:
                raise
            self.enabled, self.error = False, err
            log.error("neuralflow: probing disabled after an error: %r", err)
            return {}

    def _probe(self, step: int) -> dict[str, float]:
        device = module_device(self.model)
        with untouched(self.model):
            states = {n: last_token_states(self.model, ids.to(device)) for n, ids in self.prompts.items()}
        metrics = {}
        for name, x in states.items():
            if name not in self.start:
                self.start[name] = x
                self.ref[name] = self._reference(x)
            frame = self._frame(name, x, step)
            if name in self.publishers:
                self.publishers[name].publish(frame)
                self.published += 1
            if self.writer is not None:
                self.writer.write(frame)
                self.recorded += 1
            if self.keep:
                self.frames[name].append(frame)
            if self.on_frame is not None:
                self.on_frame(frame)
            drift = layer_drift(x, self.start[name])
            self.drift[name].append((step, drift))
            metrics.update(self._metrics(name, step, drift))
        return metrics

    def _reference(self, x: torch.Tensor) -> tuple:
        if self.reference is not None:
            return self.reference
        return seed_stats(x, per_layer=False)

    def _frame(self, name: str, x: torch.Tensor, step: int) -> Frame:
        reference = self.ref[name] if self.norm == "reference" else None
        picture = render(x, width=self.width, layout=self.layout, norm=self.norm, reference=reference)
        ids = self.prompts[name]
        meta = {"model": self.model_name, "label": self.labels[name], "probe": name}
        if self.tokenizer is not None and hasattr(self.tokenizer, "decode"):
            meta["token"] = str(self.tokenizer.decode([int(ids[0, -1])]))
        seq = self.seq[name]
        self.seq[name] += 1
        return Frame(pixels=picture.pixels.numpy(), layers=self.layers, hidden=self.hidden,
                     layout=self.layout, norm=self.norm, lo=picture.lo.numpy(), hi=picture.hi.numpy(),
                     step=step, token_id=int(ids[0, -1]), position=ids.shape[1] - 1, row=0,
                     rank=self.rank, time_ns=time.time_ns(), session=self.sessions[name], seq=seq,
                     meta=meta)

    def _metrics(self, name: str, step: int, drift: np.ndarray) -> dict[str, float]:
        jump = first_jump(drift, self.factor, self.floor)
        last = next((layer for _, probe, layer in reversed(self.jumps) if probe == name), None)
        if jump is not None and jump != last:
            self.jumps.append((step, name, jump))
            below = f"at most {drift[:jump].max():.3g} in the layers below" if jump else "the first layer"
            log.warning("neuralflow: probe %r at step %d: drift jumps at layer %d (%.3g; %s)",
                        self.labels[name], step, jump, drift[jump], below)
        out = {f"drift/{name}/layer_{layer:02d}": float(v) for layer, v in enumerate(drift)}
        out[f"drift/{name}/mean"] = float(np.mean(drift))
        out[f"drift/{name}/jump_layer"] = -1 if jump is None else jump
        return out

    def close(self) -> None:
        """Close the publishers and the recording (idempotent)."""
        for publisher in self._distinct_publishers():
            publisher.close()
        self.publishers = {}
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Prober's keyword options and their defaults: what ProbeCallback passes on (checked when the
# callback is built; its tokenizer is ProbeCallback's own argument)
_PROBER_OPTIONS = {name: p.default for name, p in inspect.signature(Prober.__init__).parameters.items()
                   if p.kind is p.KEYWORD_ONLY and name != "tokenizer"}


# ---- the Trainer callback --------------------------------------------------------------------

class ProbeCallback(TrainerCallback):
    """Probe at the start of training, every `every` optimizer steps and at the last step (see
    the module docstring).

    Takes Prober's options, plus export: a folder to write each prompt's timeline to at the end
    of training (export_mode "plain", "side" or "diff"). The tokenizer defaults to the Trainer's
    processing_class (a processor's tokenizer). `prober` is built anew at each on_train_begin
    (its first probe is the reference) and closed at on_train_end, after a last probe of the
    final model when the run stopped early, after its last probe (that one reaches
    log_history only). Each checkpoint keeps the step-0 states (neuralflow_probe.pt), so a
    run resumed from it still measures drift against step 0; its export holds the frames
    since the resume (the recording, appended to, holds them all).
    """

    def __init__(self, prompts, tokenizer=None, *, every: int = 50, export=None,
                 export_mode: str = "plain", **options):
        # what the Prober would refuse at on_train_begin (or at the first probe) is refused here
        if not isinstance(every, numbers.Integral) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if export_mode not in EXPORT_MODES:
            raise ValueError(f"export_mode must be one of {EXPORT_MODES}, got {export_mode!r}")
        unknown = sorted(set(options) - set(_PROBER_OPTIONS))
        if unknown:
            raise TypeError(f"ProbeCallback got unknown options {unknown} "
                            f"(Prober's options: {', '.join(sorted(_PROBER_OPTIONS))})")
        given = {**_PROBER_OPTIONS, **options}
        _check_options(given["width"], given["layout"], given["norm"], given["ranks"])
        names = _named(prompts)  # (empty: refused)
        if export:
            _file_stems(names)  # two names for one file: refused
        # the named prompts, not `prompts`: a generator is read once, here
        self.prompts, self.tokenizer, self.every = names, tokenizer, int(every)
        self.export, self.export_mode, self.options = export, export_mode, options
        self.prober: Prober | None = None
        self.probed: list[int] = []  # steps probed (on every rank, by schedule)
        self._pending: tuple[int, dict] | None = None
        self._attached = False

    def attach(self, trainer) -> "ProbeCallback":
        """Add this callback to `trainer` ahead of the reporters, so drift reaches them. Already
        there (callbacks=[probe]): moved ahead, not added twice (it would probe twice)."""
        from transformers.trainer_callback import DefaultFlowCallback
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [c for c in callbacks if c is not self]
        at = 1 if callbacks and isinstance(callbacks[0], DefaultFlowCallback) else 0
        callbacks.insert(at, self)
        self._attached = True
        return self

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if getattr(self, "prober", None) is not None:
            self.prober.close()  # an earlier train() that raised never reached on_train_end
        from transformers import PreTrainedTokenizerBase
        tokenizer = self.tokenizer or processing_class
        if not isinstance(tokenizer, PreTrainedTokenizerBase):  # a processor: its tokenizer
            tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        ranks = {"rank": args.process_index, "world": args.world_size}
        self.prober = Prober(model, self.prompts, tokenizer=tokenizer, **{**ranks, **self.options})
        self.probed, self._pending = [], None
        reporters = [r for r in (args.report_to or []) if r != "none"]
        if reporters and not self._attached:
            log.warning("neuralflow: drift keys reach %s only with probe.attach(trainer) "
                        "(callbacks=[probe] runs after the reporters)", ", ".join(reporters))
        if state.global_step > 0 and self.prober.active:
            self._resume(args, state.global_step)
        self._probe(state.global_step, control)

    def _resume(self, args, step: int) -> None:
        """Resumed from a checkpoint: drift stays against step 0, from the states it saved. The
        Trainer does not tell callbacks which checkpoint it resumed from: this looks in
        TrainingArguments.resume_from_checkpoint, then in output_dir/checkpoint-<step>."""
        name = f"neuralflow_probe{self.prober.rank_suffix}.pt"
        folders = [Path(args.output_dir) / f"checkpoint-{step}"]
        if isinstance(args.resume_from_checkpoint, str):
            folders.insert(0, Path(args.resume_from_checkpoint))
        path = next((f / name for f in folders if (f / name).is_file()), None)
        try:
            if path is None:
                raise FileNotFoundError(f"no {name} in {' or '.join(map(str, folders))} "
                                        "(a checkpoint elsewhere: pass it as TrainingArguments("
                                        "resume_from_checkpoint=...) too)")
            saved = torch.load(path, weights_only=True)
            wanted = (self.prober.layers, self.prober.hidden)
            for name, x in saved["start"].items():
                same_prompt = name in self.prober.prompts and torch.equal(saved["prompts"][name],
                                                                           self.prober.prompts[name])
                if same_prompt and tuple(x.shape) == wanted:
                    self.prober.start[name] = x
                    self.prober.ref[name] = self.prober._reference(x)
            self.prober.jumps = [tuple(jump) for jump in saved["jumps"]]
        except Exception as err:  # a resumed run still trains
            if self.options.get("strict"):
                raise
            log.warning("neuralflow: resumed at step %d without the probes' step-0 states (%s): "
                        "drift and the picture scale are measured from step %d", step, err, step)
            return
        lost = [name for name in self.prober.prompts if name not in self.prober.start]
        if lost:
            log.warning("neuralflow: resumed at step %d: the checkpoint has no step-0 states for "
                        "probes %s (new, or changed prompts); they start again at step %d", step,
                        ", ".join(lost), step)

    def on_save(self, args, state, control, **kwargs):
        if self.prober is None or not (self.prober.active and self.prober.start):
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():  # (not the checkpoint the Trainer just wrote: a search's run-N)
            return
        saved = {"start": self.prober.start, "jumps": self.prober.jumps,
                 "prompts": {name: self.prober.prompts[name] for name in self.prober.start}}
        path = folder / f"neuralflow_probe{self.prober.rank_suffix}.pt"
        partial = path.with_name(path.name + ".partial")
        try:  # written whole or not at all: a kill mid-write leaves no half file to resume from
            torch.save(saved, partial)
            os.replace(partial, path)
        except Exception as err:  # a full disk must not stop training
            if self.options.get("strict"):
                raise
            log.error("neuralflow: saving the probes' step-0 states into %s failed: %r", folder, err)

    def on_step_end(self, args, state, control, **kwargs):
        # the last step too, here and not at on_train_end: its drift goes through the logs
        # to the reporters and the console like every other probe's
        last = state.global_step >= state.max_steps or control.should_training_stop
        if state.global_step % self.every == 0 or last:
            self._probe(state.global_step, control)

    def _probe(self, step: int, control) -> None:
        if self.probed and self.probed[-1] == step:
            return
        self.probed.append(step)
        metrics = self.prober.probe(step)
        if len(self.probed) > 1:
            self._pending = (step, metrics)
            control.should_log = True  # on every rank alike: the Trainer's log gathers the loss

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or self._pending[0] != state.global_step:
            return
        metrics = self._pending[1]
        self._pending = None
        if logs is not None:
            logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, **kwargs):
        if self.prober is None:
            return
        try:
            # a run stopped early, after its last probe: the final model too, into log_history
            # only (the Trainer logs no more; unless it just loaded an earlier, best model)
            if self.probed and self.probed[-1] != state.global_step and not args.load_best_model_at_end:
                self.probed.append(state.global_step)
                metrics = self.prober.probe(state.global_step)
                if metrics:
                    state.log_history.append({"step": state.global_step, **metrics})
            if self.export and self.prober.active:
                stems = _file_stems(self.prober.frames)  # a file name, whatever the prompt's name
                for name, frames in self.prober.frames.items():
                    if frames:
                        stem = stems[name] + self.prober.rank_suffix
                        export_timeline(frames, self.export, mode=self.export_mode, name=stem)
        except Exception as err:
            if self.options.get("strict"):
                raise
            log.error("neuralflow: exporting the probe timeline failed: %r", err)
        finally:
            self.prober.close()
