"""The capture engine: hooks on every decoder layer, one picture per forward pass.

    from neuralflow.engine import Engine
    with Engine(model, publish="tcp://127.0.0.1:5555") as engine:
        model.generate(**inputs, max_new_tokens=64)
    print(engine.stats)

Per forward pass (DESIGN.md, "Data flow"):
  layer i hook      staging[i] <- output[row, -1]           (device copy, no sync; in an
                    eager decode step the outputs are held and copied at once at the last layer)
  last layer hook   render_into(staging) -> frame buffers     (one compiled function on CUDA,
                    replayed as a CUDA graph when the forward is eager)
  model hook        frame -> free pinned slot, non_blocking; record the slot's event
  delivery thread   wait on the event (the only wait), build a Frame, hand it to the sinks
Everything is allocated once at attach, except the eager decode step's one temporary (the
torch.cat in _capture_layer). The hooks never wait for the device; when no slot is free (the
consumer fell behind) the frame is dropped and counted, and its sequence number is skipped so
subscribers see the gap.

The observer never crashes the observed: an error inside capture disables capture with one
log line (strict=True raises instead, for tests).
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass

import torch

from neuralflow.engine.layers import (decoder_layers, hidden_size, layer_output, model_name,
                                      module_device, residual_streams, unwrap)
from neuralflow.engine.render import (check_options, cuda_graph, frame_shape, fused_by_default,
                                      reference_stats, render_into)
from neuralflow.viewer.frame import Frame
from neuralflow.viewer.wire import check_geometry, new_session_id

log = logging.getLogger("neuralflow")

# By default torch.compile does not guard on module hooks, so code compiled before the Engine
# attached would be reused with the hooks silently skipped (stale frames). With the guards,
# attaching or detaching makes compiled code retrace once; each variant is then cached.
torch._dynamo.config.skip_nnmodule_hook_guards = False


@dataclass
class _Slot:
    """One pinned host copy of a frame and the event that says the copy is done."""

    pixels: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    token: torch.Tensor
    event: object  # torch.cuda.Event, or None on the CPU (copies are synchronous there)
    arrays: tuple | None = None  # numpy views of the four, made by the delivery thread at first use


@dataclass
class _Shipped:
    slot: _Slot
    step: int
    position: int
    seq: int
    time_ns: int


def _cached_length(cache) -> int | None:
    """How many positions a DynamicCache holds (its tensors' shape: no device sync), else None.
    A hybrid model's linear-attention or convolution layer counts in a device tensor (transformers
    5.25 gives it as the cache's length when it is layer 0): reading it would sync, so the first
    layer that knows its length as an int answers."""
    if type(cache).__name__ != "DynamicCache":
        return None
    try:
        for layer in getattr(cache, "layers", None) or [cache]:  # (no layers before transformers 4.56)
            length = layer.get_seq_length()
            if isinstance(length, int):
                return length
    except Exception:  # layers with no length (linear attention, say)
        return None
    return None


def _cache_index(module: torch.nn.Module) -> int | None:
    """Where the module's forward takes its cache positionally (GPT-2 and Bloom: second, so a
    hand-written loop may call model(ids, cache)), or None."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        return None
    for index, parameter in enumerate(parameters):
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return None
        if parameter.name in ("past_key_values", "cache"):  # renamed in transformers 5.2x
            return index
    return None


class Engine:
    """Capture one frame per forward pass of `model` while attached (a context manager).

    row: batch row to watch; with beam search or num_return_sequences a row of the expanded
    batch (prompt b's k-th beam is row b * beams + k). width, layout, norm: see `render`.
    reference: lo/hi for norm="reference" (a Picture, a Frame or a (lo, hi) pair); None freezes
    the first frame's seed statistics. on_frame: callable(Frame) run on the delivery thread. publish: a ZeroMQ
    endpoint to stream frames to; wait: seconds attach waits for a viewer to subscribe there
    (returning as soon as one has), so the first frames do not go out to no one.
    tokenizer: decodes token ids into meta["token"]. label: meta["label"], shown by viewers.
    rank: stamped on every frame (Frame.rank), for one Engine per process of a multi-process run.
    slots: pinned ring size (>= 3): how many frames may wait for the delivery thread before new
    ones are dropped (16 Mistral-7B frames are 2 MiB; a small CPU model makes one a millisecond,
    and the delivery thread may wait longer than that for the GIL).
    strict: raise capture errors instead of disabling capture.
    """

    def __init__(self, model: torch.nn.Module, *, row: int = 0, width: int = 512,
                 layout: str = "bands", norm: str = "seed", reference=None, on_frame=None,
                 publish: str | None = None, wait: float = 0.0, tokenizer=None, label: str = "",
                 rank: int = 0, slots: int = 16, strict: bool = False):
        check_options(width, layout, norm)
        if slots < 3:
            raise ValueError(f"slots must be at least 3, got {slots}")
        if row < 0:
            raise ValueError(f"row must be >= 0, got {row}")
        if wait and not publish:
            raise ValueError("wait= waits for a viewer of publish=, and no endpoint is given")
        self.model = model
        _, self.layers = decoder_layers(model)
        self.hidden = hidden_size(model)
        self._streams = residual_streams(model)  # several residual streams per layer output?
        # frames the wire and recordings cannot carry would fail only later, one by one
        check_geometry(width, frame_shape(len(self.layers), self.hidden, width)[0], len(self.layers),
                       self.hidden, f"width={width} cannot be captured for {model_name(model)}")
        self.row, self.width, self.layout, self.norm = row, width, layout, norm
        self.reference, self.tokenizer, self.rank, self.strict = reference, tokenizer, rank, strict
        self.n_slots = slots
        self.meta = {"model": model_name(model)}
        if label:
            self.meta["label"] = label
        self.session = new_session_id()
        self.sinks = [on_frame] if on_frame else []
        self.publish_endpoint, self.wait = publish, wait
        self.publisher = None
        self.stats = {"captured": 0, "delivered": 0, "dropped": 0, "sink_errors": 0, "stale": 0,
                      "partial": 0, "delivery_cpu_s": 0.0}
        self.error: BaseException | None = None
        self._seq = 0  # frame sequence numbers, over every attach of this Engine (one session)
        self._handles: list = []
        self._thread: threading.Thread | None = None
        # one object per hook for the Engine's life: code compiled with the hooks guards on
        # them, so detaching and attaching again reuses it instead of recompiling
        self._start_hook, self._end_hook = self._on_model_start, self._on_model_end
        self._layer_hooks = [self._layer_hook(i) for i in range(len(self.layers))]
        # read from the signature once here: binding each forward's arguments would cost the hot path
        self._cache_at = _cache_index(unwrap(model))
        self._allocated = False

    # ---- attach / detach -------------------------------------------------------------
    def __enter__(self) -> "Engine":
        self.attach()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.detach()
        if self.strict and self.error is not None and exc_type is None:
            raise self.error  # a consumer failed on the delivery thread

    def attach(self) -> None:
        """Allocate the buffers (once), register the hooks, start the delivery thread.

        Attaching and detaching again reuses the buffers and hooks, so code compiled with them
        (a static-cache decode step, CUDA graphs) is reused too.
        """
        if self._handles:
            raise RuntimeError("this Engine is already attached")
        if hasattr(self.model, "_orig_mod"):
            raise RuntimeError(
                "this is a torch.compile wrapper: attach the Engine to the uncompiled model first "
                "(or to wrapper._orig_mod), then call the compiled one")
        if not self._allocated or self._staging.device != module_device(self.layers[-1]):
            # buffers made here must be plain tensors: made under inference_mode, writing them
            # after it would fail
            with torch.inference_mode(False):
                self._allocate()
        self.error = None  # this attach's errors only
        if self.publish_endpoint:
            from neuralflow.viewer.stream import Publisher
            self.publisher = Publisher(self.publish_endpoint)
            self.sinks.append(self.publisher.publish)
        # (step, position) of the last forward with each cache object, held weakly: a finished
        # sequence's cache must not stay alive here
        self._sequences: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._uncached_length = None  # the last forward's length when it had no cache object
        self._step, self._position = 0, 0
        self._rendered = False
        self._last_frame = None  # the delivery thread's previous frame, for _check_fresh
        self._enabled = True
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for slot in self._slots:
            self._free.put(slot)
        self._filled: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._deliver, name="neuralflow-delivery", daemon=True)
        self._thread.start()
        top = unwrap(self.model)  # PEFT's generate runs the inner model, never the wrapper
        try:
            self._handles.append(top.register_forward_pre_hook(self._start_hook, with_kwargs=True))
            for layer, hook in zip(self.layers, self._layer_hooks):
                self._handles.append(layer.register_forward_hook(hook))
            self._handles.append(top.register_forward_hook(self._end_hook))
            if self.wait > 0 and not self.publisher.wait_for_subscribers(1, self.wait):
                log.warning("neuralflow: no viewer subscribed to %s within %g s; frames go out "
                            "anyway, and a viewer that joins later sees them from then on",
                            self.publisher.endpoint, self.wait)
        except BaseException:  # (Ctrl-C in the wait, say): no hook or bound port left behind
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every hook, deliver the frames already shipped, stop the thread."""
        self._enabled = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._allocated:
            self._held = [None] * len(self.layers)  # let go of the last step's layer outputs
        if self._thread is not None:
            self._filled.put(None)
            self._thread.join()
            self._thread = None
        if self.publisher is not None:
            self.sinks.remove(self.publisher.publish)
            self.publisher.close()
            self.stats["publisher"] = dict(self.publisher.stats)
            self.publisher = None

    def _allocate(self) -> None:
        device = module_device(self.layers[-1])  # where the last layer's output will be
        layers = len(self.layers)
        shape = frame_shape(layers, self.hidden, self.width)
        self._staging = torch.zeros(layers, self.hidden, dtype=torch.float32, device=device)
        self._pixels = torch.zeros(shape, dtype=torch.uint8, device=device)
        self._lo = torch.zeros(layers, dtype=torch.float32, device=device)
        self._hi = torch.zeros(layers, dtype=torch.float32, device=device)
        self._token = torch.full((1,), -1, dtype=torch.long, device=device)
        if self.norm == "reference" and self.reference is not None:
            self._ref_lo, self._ref_hi = reference_stats(self.reference, layers, device)
        else:
            self._ref_lo = torch.zeros(layers, dtype=torch.float32, device=device)
            self._ref_hi = torch.ones(layers, dtype=torch.float32, device=device)
        self._ref_ready = self.reference is not None
        self._one_device = len({module_device(layer) for layer in self.layers}) == 1
        self._hold, self._held = False, [None] * layers
        for buffer in (self._staging, self._pixels, self._lo, self._hi, self._token,
                       self._ref_lo, self._ref_hi):
            # fixed addresses, so CUDA graphs may write them (like module buffers; see issue 7).
            # Dynamo also counts tensors reached through a module's hooks as static; a tensor a
            # hook writes that is not static (a global, say) makes inductor skip CUDA graphs.
            # tests/test_compile.py checks that the compiled decode step writes no such input.
            torch._dynamo.mark_static_address(buffer)
        cuda = device.type == "cuda"

        def host(like):
            return torch.empty(like.shape, dtype=like.dtype, pin_memory=cuda)

        self._slots = [_Slot(host(self._pixels), host(self._lo), host(self._hi), host(self._token),
                             # blocking: the delivery thread sleeps while it waits, not spins
                             torch.cuda.Event(blocking=True) if cuda else None)
                       for _ in range(self.n_slots)]
        self._warm_up()
        self._allocated = True  # only once everything above worked

    def _warm_up(self) -> None:
        """Run the frame math once per variant the hooks will use, on the zero staging buffer, so
        that compiling it (CUDA: a few seconds, once per shape and process) happens here at
        attach, not inside the first forward pass of the generation being watched. If it will
        not compile (no working triton, say), the same math runs as eager ops, with a warning.
        On CUDA each variant is then captured as a CUDA graph for eager forwards to replay."""
        started = time.perf_counter()
        first = self.norm if self._ref_ready or self.norm != "reference" else "seed"
        norms = dict.fromkeys((first, self.norm))  # the variants the hooks will render
        self._fuse = fused_by_default(self._staging.device)
        try:
            for norm in norms:
                self._render_math(norm)
        except Exception as err:
            if not self._fuse:
                raise
            log.warning("neuralflow: compiling the frame math failed, running it as eager torch "
                        "ops instead (same picture, more kernel launches): %r", err)
            self._fuse = False
            for norm in norms:
                self._render_math(norm)
        self._graphs = {}
        if self._staging.is_cuda:
            torch.cuda.synchronize(self._staging.device)  # sync point: at attach, not per token
            try:  # eager forwards replay the math in one launch (compiled ones inline it)
                self._graphs = {norm: cuda_graph(lambda: self._render_math(norm), self._staging.device)
                                for norm in norms}
            except Exception as err:
                log.warning("neuralflow: capturing the frame math as a CUDA graph failed, launching "
                            "its kernels one by one instead (same picture): %r", err)
        log.info("neuralflow: frame math ready for [%d, %d] on %s in %.2f s", len(self.layers),
                 self.hidden, self._staging.device, time.perf_counter() - started)

    def _render_math(self, norm: str) -> None:
        render_into(self._staging, self._pixels, self._lo, self._hi, width=self.width,
                    layout=self.layout, norm=norm, ref_lo=self._ref_lo, ref_hi=self._ref_hi,
                    fuse=self._fuse)

    # ---- hooks (hot path: no .item(), .cpu(), printing or waiting; one allocation) -----
    def _guarded(self, fn, *args):
        if not self._enabled:
            return
        try:
            fn(*args)  # the layer outputs are detached: capture never joins the autograd graph
        except Exception as err:
            if self.strict:
                raise
            self._enabled = False
            self.error = err
            log.error("neuralflow: capture disabled after an error: %r", err)

    # host-side bookkeeping runs eagerly even inside a compiled model call
    @torch.compiler.disable
    def _on_model_start(self, module, args, kwargs):
        self._guarded(self._start, args, kwargs)

    def _start(self, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        source = ids if ids is not None else embeds
        if source is None:
            raise ValueError("forward called without input_ids or inputs_embeds")
        if self.row >= source.shape[0]:
            raise ValueError(f"row={self.row} but the batch has {source.shape[0]} rows")
        q_len = source.shape[1]
        if q_len == 0:  # (transformers before 5.2x: generate over a DynamicCache after reset())
            raise ValueError("forward called with no new positions (an empty input_ids): nothing to capture")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # renamed in transformers 5.2x
        if cache is None and self._cache_at is not None and len(args) > self._cache_at:
            cache = args[self._cache_at]  # passed positionally: model(ids, cache)
        self._step, self._position = self._place(cache, q_len)
        self._uncached_length = q_len if cache is None else None
        self._rendered = False
        # here, outside any compiled graph: this step's input_ids is a new tensor, and a graph
        # that read it through an attribute would take it as a static input and re-record its
        # CUDA graph on every step (seen on an H200; tests/test_compile.py checks it)
        if ids is not None:
            self._token.copy_(ids[self.row, -1:])
        else:
            self._token.fill_(-1)
        # holding the layer outputs is cheap only for one new position, and safe only without
        # autograd (no graph kept alive) and on one device (one torch.cat)
        self._hold = q_len == 1 and self._one_device and not torch.is_grad_enabled()

    def _place(self, cache, q_len: int) -> tuple[int, int]:
        """(step, position) of this forward's last token: step 0 is a sequence's prefill, each
        later forward of the same sequence is one step more."""
        if cache is None:  # no cache (use_cache=False): each forward reads the whole sequence;
            # one longer than the last continues it, outside training (batches are no sequence)
            if (self._uncached_length is not None and q_len == self._uncached_length + 1
                    and not self.model.training):
                return self._step + 1, q_len - 1
            return 0, q_len - 1
        if isinstance(cache, (tuple, list)):  # a legacy cache (transformers 4.x): a new tuple
            # every step, empty or None before the prefill
            return (self._step + 1, self._position + q_len) if len(cache) else (0, q_len - 1)
        try:
            last = self._sequences.get(cache)
        except TypeError:  # not weakly referable (or hashable): each forward is a new sequence
            last = None
        past = _cached_length(cache)  # a DynamicCache knows its length; others cost a sync
        if past is None:  # (a StaticCache, say): the same object continues its sequence
            step, position = (0, q_len - 1) if last is None else (last[0] + 1, last[1] + q_len)
        elif past == 0:  # empty: a new sequence (or the same cache reset)
            step, position = 0, q_len - 1
        elif last is not None:  # the same sequence: positions from the cache, which assisted
            step, position = last[0] + 1, past + q_len - 1  # decoding crops and reset() empties
        else:  # a new sequence over a reused prefix
            step, position = 0, past + q_len - 1
        self._remember(cache, (step, position))
        return step, position

    def _remember(self, cache, place: tuple[int, int]) -> None:
        try:
            self._sequences[cache] = place
        except TypeError:  # not weakly referable (or hashable)
            pass

    def _layer_hook(self, i: int):
        last = i == len(self.layers) - 1

        def hook(module, args, output):  # called 32 times per token on Mistral 7B: kept lean
            self._guarded(self._capture_layer, i, last, output)

        return hook

    def _capture_layer(self, i: int, last: bool, output) -> None:
        hidden = layer_output(output, self._streams)
        # (is_compiling first: compiled code never reads the eager-only flag, so never guards on it)
        if not torch.compiler.is_compiling() and self._hold:
            # an eager decode step: keep the [batch, 1, hidden] output, copy all layers at once
            # below (2 kernel launches per token instead of one per layer). The cat's
            # [batch, layers, hidden] temporary comes from the caching allocator on CUDA. A cat
            # straight into the float32 staging buffer (out=) was slower on the CPU for bf16
            # states (74 against 37 us at 32 x 4096, one thread); not tried on a GPU
            self._held[i] = hidden
            if last:
                self._staging.copy_(torch.cat(self._held, dim=1)[self.row])
                # this step's only: a forward whose other layers ran compiled (a graph break in
                # the layer stack) fails the cat and says so, rather than showing old rows
                self._held[:] = [None] * len(self._held)
        else:
            hidden = hidden[self.row, -1]
            # detach only when there is a graph to leave (training); generation has none.
            # (Row views made once would save ~1 us here, but a compiled graph then sees inputs
            # that alias the staging buffer and treats them all as non-static: no CUDA graphs.)
            self._staging[i].copy_(hidden.detach() if hidden.requires_grad else hidden)
        if last:
            self._render()

    def _render(self) -> None:
        norm = self.norm
        if norm == "reference" and not self._ref_ready:
            norm = "seed"  # the first frame renders as seed and becomes the reference
        graph = None if torch.compiler.is_compiling() else self._graphs.get(norm)
        if graph is not None:
            graph.replay()
        else:
            self._render_math(norm)
        if norm != self.norm:
            self._ref_lo.copy_(self._lo)
            self._ref_hi.copy_(self._hi)
            self._ref_ready = True
        self._rendered = True

    @torch.compiler.disable
    def _on_model_end(self, module, args, output):
        self._guarded(self._end, output)

    def _end(self, output) -> None:
        if self._uncached_length is not None:  # called without a cache: the one the model made
            # for itself (if any) continues this sequence (a hand-written decode loop passes it on)
            # (a ModelOutput is a dict; read as a plain one: its attribute and its get() warn
            # about the old name, past_key_values, in transformers 5.2x)
            if isinstance(output, dict):
                cache = dict.get(output, "cache", dict.get(output, "past_key_values"))
            elif isinstance(output, (tuple, list)):  # return_dict=False: (logits, cache, ...)
                cache = next((x for x in output if hasattr(x, "get_seq_length")), None)
            else:
                cache = None
            if cache is not None and not isinstance(cache, (tuple, list)):
                self._remember(cache, (self._step, self._position))
        self._ship()

    def _ship(self) -> None:
        self._hold = False  # until the next start hook says what the next forward is
        if not self._rendered:  # no picture: the last layer's hook did not run
            self.stats["partial"] += 1
            if self.stats["partial"] == 1:
                log.warning("neuralflow: a forward pass ended without the last decoder layer's "
                            "hook running, so it has no frame: an early-exit draft, or compiled "
                            "code that skips the hooks (attach the Engine first, then compile)")
            return
        seq = self._seq
        self._seq += 1
        self.stats["captured"] += 1
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            self.stats["dropped"] += 1  # the consumer is behind: drop, never wait
            return
        # CUDA: queued copies that the event tracks. Elsewhere nothing would say when a queued
        # copy is done (MPS, say), so the copies are plain ones (on the CPU they are anyway).
        queued = slot.event is not None
        slot.pixels.copy_(self._pixels, non_blocking=queued)
        slot.lo.copy_(self._lo, non_blocking=queued)
        slot.hi.copy_(self._hi, non_blocking=queued)
        slot.token.copy_(self._token, non_blocking=queued)
        if queued:
            slot.event.record(torch.cuda.current_stream(self._pixels.device))  # the copies' stream
        self._filled.put(_Shipped(slot, self._step, self._position, seq, time.time_ns()))

    # ---- delivery thread (the consumer: the only place that waits) --------------------
    def _deliver(self) -> None:
        while True:
            shipped = self._filled.get()
            if shipped is None:
                return
            # this thread's CPU time (the wait for the copies sleeps): mostly Python work, which
            # holds the GIL that a host-bound generating thread needs too
            started = time.thread_time_ns()
            self._hand_on(shipped)
            self.stats["delivery_cpu_s"] += (time.thread_time_ns() - started) * 1e-9

    def _hand_on(self, shipped: _Shipped) -> None:
        try:
            frame = self._unpack(shipped)
        except Exception as err:
            self._consumer_failed("building a frame", err)
            return
        if self.tokenizer is not None and frame.token_id >= 0:
            try:
                frame.meta["token"] = self.tokenizer.decode([frame.token_id])
            except Exception as err:  # the frame goes out without its token text
                self._consumer_failed("decoding a token", err)
        self._check_fresh(frame)
        self.stats["delivered"] += 1
        for sink in list(self.sinks):
            try:
                sink(frame)
            except Exception as err:  # a broken consumer never stops delivery
                self._consumer_failed(f"frame consumer {sink!r}", err)

    def _unpack(self, shipped: _Shipped) -> Frame:
        slot = shipped.slot
        try:
            if slot.event is not None:
                slot.event.synchronize()  # sync point, on the consumer thread only
            if slot.arrays is None:
                slot.arrays = (slot.pixels.numpy(), slot.lo.numpy(), slot.hi.numpy(), slot.token.numpy())
            pixels, lo, hi, token = slot.arrays
            return Frame(
                pixels=pixels.copy(), layers=len(self.layers), hidden=self.hidden,
                layout=self.layout, norm=self.norm, lo=lo.copy(), hi=hi.copy(), step=shipped.step,
                token_id=int(token[0]), position=shipped.position, row=self.row,
                rank=self.rank, time_ns=shipped.time_ns, session=self.session, seq=shipped.seq,
                meta=dict(self.meta))
        finally:
            self._free.put(slot)

    def _check_fresh(self, frame: Frame) -> None:
        """A decode step whose picture and per-layer ranges equal the previous step's to the bit
        means the frame math read stale states (a CUDA graph replaying an old buffer; hooks that
        did not run at all are caught as "partial"): say so once, never silently. Under
        norm="seed" or "layer" the ranges come from the states, so a new position alone changes
        them; a fixed reference range can quantize two steps alike, so it is not checked. Nor is a
        step fed the same token as the one before: over a context of one repeated token, the
        states can repeat for real (every position attends to the same values)."""
        last, self._last_frame = self._last_frame, frame
        if (self.norm != "reference" and frame.step > 0 and last is not None
                and (frame.token_id != last.token_id or frame.token_id < 0)
                and frame.lo.tobytes() == last.lo.tobytes() and frame.hi.tobytes() == last.hi.tobytes()
                and frame.pixels.tobytes() == last.pixels.tobytes()):
            self.stats["stale"] += 1
            if self.stats["stale"] == 1:
                log.error("neuralflow: step %d repeats the previous frame exactly: the frame math "
                          "is not seeing new layer states (model compiled before the Engine "
                          "attached?); attach the Engine first, then compile", frame.step)

    def _consumer_failed(self, what: str, err: Exception) -> None:
        self.stats["sink_errors"] += 1
        log.error("neuralflow: %s failed: %r", what, err)
        if self.strict:
            self.error = err
