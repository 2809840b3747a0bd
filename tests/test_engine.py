"""The capture engine during real generate calls on tiny models (CPU)."""

import sys
import threading
import time

import numpy as np
import pytest
import torch

from neuralflow.engine import Engine, UnsupportedModel, render
from neuralflow.engine.render import _host_frame_math
from neuralflow.engine.layers import layer_output, residual_streams
from tiny_models import CONFIGS, VOCAB, cache_name, cache_of, greedy, tiny


def prompt(batch=1, length=5, seed=1):
    """Random ids, never the special ids 0..2 nor VOCAB - 1 (the llava model's image token)."""
    return torch.randint(3, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def independent_states(model, ids, new_tokens, row):
    """Each forward's [layers, hidden] last-token layer outputs, captured without the engine:
    output_hidden_states for layers 0..L-2 (entry 0 is the embedding), and the final norm's
    input for the last layer (transformers puts the norm's output in the last entry)."""
    last_inputs = []
    handle = model.model.norm.register_forward_pre_hook(
        lambda mod, args: last_inputs.append(args[0][row, -1].detach().clone()))
    try:
        out = greedy(model, ids, new_tokens, output_hidden_states=True, return_dict_in_generate=True)
    finally:
        handle.remove()
    per_step = []
    for step, hidden in enumerate(out.hidden_states):
        layers = [h[row, -1] for h in hidden[1:-1]] + [last_inputs[step]]
        per_step.append(torch.stack(layers).float())
    return out.sequences, per_step


@pytest.mark.parametrize("row,batch,norm", [(0, 1, "seed"), (1, 2, "seed"), (0, 1, "layer")])
def test_one_frame_per_forward_equal_to_render(row, batch, norm):
    model = tiny("mistral")
    ids = prompt(batch)
    new = 6
    frames = []
    before = time.time_ns()
    with Engine(model, row=row, width=32, norm=norm, on_frame=frames.append, strict=True) as engine:
        sequences = greedy(model, ids, new)
    assert engine.stats["captured"] == engine.stats["delivered"] == new
    expected_sequences, per_step = independent_states(model, ids, new, row)
    assert torch.equal(sequences, expected_sequences)
    assert [f.step for f in frames] == list(range(new))
    assert [f.seq for f in frames] == list(range(new))
    length = ids.shape[1]
    for step, frame in enumerate(frames):
        assert frame.token_id == int(sequences[row, length - 1 + step])
        assert frame.position == length - 1 + step
        assert frame.row == row and frame.layers == 3 and frame.hidden == 64
        assert frame.session == engine.session
        want = render(per_step[step], width=32, norm=norm)
        assert frame.norm == norm
        np.testing.assert_array_equal(frame.pixels, want.pixels.numpy())
        np.testing.assert_array_equal(frame.lo, want.lo.numpy())
        assert before <= frame.time_ns <= time.time_ns()
    assert all(a.time_ns <= b.time_ns for a, b in zip(frames, frames[1:]))


def test_eager_decode_steps_copy_all_layers_at_once():
    """In eager decode steps the hooks hold each layer's [batch, 1, hidden] output and copy them
    all with one torch.cat at the last layer; the frames equal those of per-layer copies (the
    path prefill, compiled code, autograd and multi-device models take)."""
    model = tiny("mistral")
    ids = prompt(batch=2)
    frames = {True: [], False: []}
    class Held(list):  # records what the hooks hold
        def __setitem__(self, i, value):
            if isinstance(i, int):
                shapes.append(tuple(value.shape))
            super().__setitem__(i, value)

    for hold in (True, False):
        engine = Engine(model, row=1, width=32, on_frame=frames[hold].append, strict=True)
        engine.attach()
        engine._one_device = hold  # False: as for a model split over devices
        engine._held, shapes = Held(engine._held), []
        try:
            greedy(model, ids, 4)
            assert shapes == ([(2, 1, 64)] * 3 * 3 if hold else [])  # 3 decode steps x 3 layers
            assert list(engine._held) == [None] * 3  # let go once copied
        finally:
            engine.detach()
    assert len(frames[True]) == len(frames[False]) == 4

    # a decode step whose first layer ran compiled (not held): an error, not the old rows
    engine = Engine(model, width=32, strict=True)
    with engine, torch.no_grad():
        greedy(model, prompt(), 2)  # a held decode step before it
        out = torch.randn(1, 1, 64)
        engine._start((prompt(length=1),), {})
        assert engine._hold
        engine._capture_layer(1, False, out)
        with pytest.raises(TypeError):
            engine._capture_layer(2, True, out)
    for a, b in zip(frames[True], frames[False]):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.lo, b.lo)
        assert a.token_id == b.token_id


def test_second_generate_starts_again_at_step_zero():
    model = tiny("llama")
    frames = []
    with Engine(model, width=64, on_frame=frames.append, strict=True):
        greedy(model, prompt(), 3)
        greedy(model, prompt(length=7), 2)
    assert [f.step for f in frames] == [0, 1, 2, 0, 1]
    assert [f.position for f in frames] == [4, 5, 6, 6, 7]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]


def test_steps_counted_without_a_cache_object():
    """use_cache=False re-reads the whole sequence each forward; transformers 4.x passed some
    models a new legacy tuple cache every step; a hand-written loop passes on the cache its
    prefill made. All still count steps and positions."""
    model = tiny("llama")
    frames = []
    with Engine(model, width=64, on_frame=frames.append, strict=True):
        greedy(model, prompt(), 3, use_cache=False)
        greedy(model, prompt(length=4), 2, use_cache=False)
    assert [f.step for f in frames] == [0, 1, 2, 0, 1]
    assert [f.position for f in frames] == [4, 5, 6, 3, 4]

    # a hand-written decode loop: the prefill makes its own cache, later calls pass it on
    frames = []
    ids = prompt()
    with Engine(model, width=64, on_frame=frames.append, strict=True), torch.no_grad():
        out = model(ids, use_cache=True)
        for _ in range(2):
            out = model(out.logits[:, -1:].argmax(-1), use_cache=True, **{cache_name(model): cache_of(out)})
    assert [(f.step, f.position) for f in frames] == [(0, 4), (1, 5), (2, 6)]
    # a reused prefix: each generate over a copy of it starts a sequence at step 0, its
    # position after the prefix
    import copy
    frames.clear()
    with Engine(model, width=64, on_frame=frames.append, strict=True), torch.no_grad():
        prefix = cache_of(model(ids[:, :3], use_cache=True))
        for _ in range(2):
            greedy(model, ids, 2, **{cache_name(model): copy.deepcopy(prefix)})
    assert [(f.step, f.position) for f in frames] == [(0, 2), (0, 4), (1, 5), (0, 4), (1, 5)]

    key, seen = torch.zeros(1, 2, 5, 16), []
    with Engine(model) as engine:  # the start hook alone, as transformers 4.x called it
        for ids, cache in ((prompt(), None), (prompt(length=1), ((key, key),)),
                           (prompt(length=1), ((key, key),)), (prompt(length=3), None)):
            engine._start((ids,), {"past_key_values": cache})
            seen.append((engine._step, engine._position))
        model.train()  # training batches one token longer than the last: no sequence
        for length in (5, 6):
            engine._start((prompt(length=length),), {})
            seen.append((engine._step, engine._position))
        model.eval()
    assert seen == [(0, 4), (1, 5), (2, 6), (0, 2), (0, 4), (0, 5)]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_family(family):
    """Each family's frames show its layer outputs. A fixed reference scale makes each layer's
    rows depend on that layer alone, so layers 0..L-2 are checked against transformers' own
    output_hidden_states (its last entry is after the final norm, so the last layer is not)."""
    model = tiny(family)
    frames = []
    with Engine(model, width=16, layout="layers", norm="reference", reference=(0.0, 0.5),
                on_frame=frames.append, strict=True) as engine:
        out = greedy(model, prompt(), 3, output_hidden_states=True, return_dict_in_generate=True)
    assert len(frames) == 3 and engine.error is None
    # labels as plain ints (a hybrid's cache once gave a tensor position, which no viewer takes)
    assert [(f.step, f.position) for f in frames] == [(0, 4), (1, 5), (2, 6)]
    assert all(type(f.position) is int and type(f.step) is int for f in frames)
    assert frames[0].pixels.shape == (3 * 4, 16)  # 3 layers x ceil(64 / 16) rows
    for frame, hidden in zip(frames, out.hidden_states):
        assert len(hidden) == 4  # the embeddings, then one entry per layer
        streams = residual_streams(model)
        states = torch.stack([layer_output(h, streams)[0, -1] for h in hidden[1:3]]).float()
        want = render(states, width=16, layout="layers", norm="reference", reference=(0.0, 0.5))
        np.testing.assert_array_equal(frame.pixels[:2 * 4], want.pixels.numpy())
        assert len(np.unique(want.pixels.numpy())) > 10  # a picture, not one saturated colour


def test_unsupported_model_names_class_and_paths():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(torch.nn.Linear(4, 4))

    with pytest.raises(UnsupportedModel, match=r"Encoder.*model\.layers.*transformer\.h"):
        Engine(Encoder())


class ToyLayer(torch.nn.Module):
    def __init__(self, tuples: bool):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.tuples = tuples

    def forward(self, h):
        h = self.linear(h)
        return (h, None) if self.tuples else h  # transformers 4.x layers return tuples


class ToyLM(torch.nn.Module):
    """A minimal causal-LM-shaped model, recording its own last-token layer outputs."""

    class Config:
        hidden_size = 8
        _name_or_path = "toy"

    def __init__(self, tuples: bool):
        super().__init__()
        self.config = self.Config()
        self.embed = torch.nn.Embedding(10, 8)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(ToyLayer(tuples) for _ in range(4))

    def forward(self, input_ids):
        h, self.seen = self.embed(input_ids), []
        for layer in self.model.layers:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
            self.seen.append(h[0, -1].detach().clone())
        return h


@pytest.mark.parametrize("tuples", [False, True])
def test_tuple_and_tensor_layer_outputs(tuples):
    model = ToyLM(tuples)
    frames = []
    with Engine(model, width=4, on_frame=frames.append, strict=True):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert len(frames) == 1
    want = render(torch.stack(model.seen), width=4)
    np.testing.assert_array_equal(frames[0].pixels, want.pixels.numpy())
    assert frames[0].token_id == 3


def snapshot(model):
    """Everything hooks or stray state could change on any module."""
    return {name: (sorted(vars(mod)), len(mod._forward_hooks), len(mod._forward_pre_hooks),
                   len(mod._forward_hooks_with_kwargs), len(mod._forward_pre_hooks_with_kwargs),
                   sorted(n for n, _ in mod.named_buffers(recurse=False)))
            for name, mod in model.named_modules()}


def test_model_left_exactly_as_found_after_exit_and_after_exception():
    model = tiny("mistral")
    before = snapshot(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with Engine(model, width=32):
        greedy(model, prompt(), 2)
    assert snapshot(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with Engine(model, width=32):
            greedy(model, prompt(), 1)
            raise RuntimeError("boom")
    assert snapshot(model) == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert not [t for t in threading.enumerate() if t.name == "neuralflow-delivery"]


@pytest.fixture
def hot_path_guard(monkeypatch):
    """Make host syncs raise when called, at any depth, from engine code on the generating
    thread (the delivery thread is the consumer: it may wait). One exception: the CPU's frame
    math reads CPU tensors back by design, which costs nothing there."""
    generating = threading.get_ident()
    host_math = _host_frame_math.__code__

    def guarded(original, name):
        def wrapper(*args, **kwargs):
            if threading.get_ident() == generating:
                cpu_read = bool(args) and isinstance(args[0], torch.Tensor) and args[0].is_cpu
                frame = sys._getframe(1)
                while frame is not None and not (cpu_read and frame.f_code is host_math):
                    if frame.f_globals.get("__name__", "").startswith("neuralflow.engine"):
                        raise AssertionError(f"{name} called on the hot path")
                    frame = frame.f_back
            return original(*args, **kwargs)
        return wrapper

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(getattr(torch.Tensor, name), name))
    monkeypatch.setattr(torch.cuda, "synchronize", guarded(torch.cuda.synchronize, "synchronize"))
    monkeypatch.setattr(torch.cuda.Event, "synchronize",
                        guarded(torch.cuda.Event.synchronize, "Event.synchronize"))


def test_hot_path_does_no_host_syncs(hot_path_guard):
    model = tiny("mistral")
    frames = []
    with Engine(model, width=32, on_frame=frames.append, strict=True) as engine:
        greedy(model, prompt(), 4)
    assert len(frames) == 4 and engine.error is None


def test_guard_catches_a_sync(hot_path_guard, monkeypatch):
    """The guard itself works: a hook that calls .item() is caught."""
    import neuralflow.engine.capture as capture
    model = tiny("mistral")
    original = capture.Engine._render

    def syncing(self):
        original(self)
        self._lo[0].item()

    monkeypatch.setattr(capture.Engine, "_render", syncing)
    with pytest.raises(AssertionError, match="item called on the hot path"):
        with Engine(model, width=32, strict=True):
            greedy(model, prompt(), 1)


def test_slow_consumer_drops_frames_and_never_blocks():
    model = tiny("mistral")
    ids = prompt()
    greedy(model, ids, 2)  # warm up
    started = time.perf_counter()
    greedy(model, ids, 24)
    plain = time.perf_counter() - started
    delivered = []

    def slow(frame):
        time.sleep(0.2)
        delivered.append(frame.seq)

    with Engine(model, width=32, slots=3, on_frame=slow) as engine:
        started = time.perf_counter()
        greedy(model, ids, 24)
        captured_time = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while engine.stats["delivered"] + engine.stats["dropped"] < 24 and time.monotonic() < deadline:
            time.sleep(0.05)  # let the consumer catch up, then one more forward
        greedy(model, ids, 1)
    stats = engine.stats
    assert stats["captured"] == 25
    assert stats["dropped"] > 0
    assert stats["delivered"] + stats["dropped"] == 25
    assert len(delivered) == stats["delivered"]
    assert delivered == sorted(delivered) and delivered[-1] == 24
    assert len(delivered) < 25  # the dropped frames left gaps in seq
    # waiting for the consumer would add at least (24 - 3 slots) x 0.2 s = 4.2 s
    assert captured_time < plain + 2.5


def test_reference_norm_freezes_first_frame_stats():
    model = tiny("mistral")
    frames = []
    with Engine(model, width=32, norm="reference", on_frame=frames.append, strict=True):
        greedy(model, prompt(), 4)
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame.lo, frames[0].lo)
        np.testing.assert_array_equal(frame.hi, frames[0].hi)
    assert frames[0].norm == "reference"
    # the frozen range is the first frame's own seed statistics
    seeded = []
    with Engine(model, width=32, norm="seed", on_frame=seeded.append, strict=True):
        greedy(model, prompt(), 1)
    np.testing.assert_array_equal(frames[0].lo, seeded[0].lo)
    np.testing.assert_array_equal(frames[0].hi, seeded[0].hi)
    np.testing.assert_array_equal(frames[0].pixels, seeded[0].pixels)
    # a caller-given reference is used from the first frame on
    given = []
    with Engine(model, width=32, norm="reference", reference=(-0.5, 0.5), on_frame=given.append):
        greedy(model, prompt(), 2)
    assert np.all(given[0].lo == -0.5) and np.all(given[1].hi == 0.5)


def test_capture_error_disables_capture_but_not_generation(caplog):
    model = tiny("mistral")
    with Engine(model, row=3, width=32) as engine:  # the batch has one row
        out = greedy(model, prompt(), 3)
    assert out.shape == (1, 8)
    assert engine.stats["captured"] == 0
    assert "row=3" in str(engine.error)
    assert "capture disabled" in caplog.text
    with pytest.raises(ValueError, match="row=3"):
        with Engine(model, row=3, width=32, strict=True):
            greedy(model, prompt(), 1)


def test_broken_consumer_is_counted_not_fatal():
    model = tiny("mistral")

    def broken(frame):
        raise KeyError("consumer bug")

    with Engine(model, width=32, on_frame=broken) as engine:
        greedy(model, prompt(), 3)
    assert engine.stats["sink_errors"] == 3 and engine.stats["delivered"] == 3


def test_delivery_cpu_time_counts_work_not_waiting():
    model = tiny("mistral")

    def busy(frame):  # 20 ms of CPU work per frame
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass

    def idle(frame):  # 20 ms of waiting per frame
        time.sleep(0.02)

    spent = {}
    for name, sink in (("busy", busy), ("idle", idle)):
        with Engine(model, width=32, slots=8, on_frame=sink, strict=True) as engine:
            greedy(model, prompt(), 4)
        assert engine.stats["delivered"] == 4
        spent[name] = engine.stats["delivery_cpu_s"]
    assert 0.08 <= spent["busy"] < 1.0
    assert 0 < spent["idle"] < 0.04


def test_token_text_and_model_name_in_meta():
    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    model = tiny("mistral")
    frames = []
    with Engine(model, width=32, on_frame=frames.append, tokenizer=Tok(), label="run-a"):
        out = greedy(model, prompt(), 2)
    assert frames[1].meta["token"] == f"<{int(out[0, 5])}>"
    assert frames[0].meta["label"] == "run-a"
    assert frames[0].meta["model"] == "MistralForCausalLM"  # no folder: the class name


def test_real_weights_path_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM
    tiny("qwen2").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    frames = []
    with Engine(model, on_frame=frames.append, strict=True):
        greedy(model, prompt(), 2)
    assert len(frames) == 2 and frames[0].pixels.shape == (3, 512)
    assert str(tmp_path) in frames[0].meta["model"]

def test_layers_offloaded_by_device_map_are_captured(tmp_path):
    """device_map offload (accelerate) keeps a layer's weights on "meta" until its forward: the
    Engine must take the device the layer computes on, not where its weights wait."""
    from accelerate import dispatch_model
    ids = prompt()
    frames = {}
    for name in ("plain", "offloaded"):
        model = tiny("mistral")
        if name == "offloaded":
            where = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                     "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                     "lm_head": "cpu"}
            model = dispatch_model(model, where, offload_dir=str(tmp_path))
            assert next(model.model.layers[-1].parameters()).device.type == "meta"
        frames[name] = []
        with Engine(model, width=32, on_frame=frames[name].append, strict=True):
            greedy(model, ids, 3)
    assert len(frames["offloaded"]) == len(frames["plain"]) == 3
    for a, b in zip(frames["offloaded"], frames["plain"]):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.lo, b.lo)



@pytest.mark.parametrize("kwargs,message", [
    ({"slots": 2}, "slots"), ({"row": -1}, "row"), ({"layout": "x"}, "layout"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Engine(tiny("mistral"), **kwargs)


def test_width_whose_frames_the_wire_cannot_carry():
    from neuralflow.benchmarks.hooks import thin_mistral
    model = thin_mistral(3, 4096, dtype=torch.float32)
    with pytest.raises(ValueError, match="width=1 .*12288x1 pixels.*8192"):
        Engine(model, width=1)
    Engine(model, width=2)  # 6144 rows: fits


def test_strict_engine_raises_consumer_errors_at_exit():
    model = tiny("mistral")

    def broken(frame):
        raise KeyError("consumer bug")

    with pytest.raises(KeyError, match="consumer bug"):
        with Engine(model, width=32, on_frame=broken, strict=True):
            greedy(model, prompt(), 2)


def test_tokenizer_error_keeps_the_frame():
    class Broken:
        def decode(self, ids):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")

    model = tiny("mistral")
    frames = []
    with Engine(model, width=32, on_frame=frames.append, tokenizer=Broken()) as engine:
        greedy(model, prompt(), 2)
    assert len(frames) == 2 and "token" not in frames[0].meta
    assert engine.stats["sink_errors"] == 2


def test_peft_model_generate_is_captured():
    import peft  # in the test extra: CI always has it
    base = tiny("mistral")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    frames = []
    with Engine(model, width=32, on_frame=frames.append, strict=True):
        model.generate(input_ids=prompt(), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                       pad_token_id=0)
    assert [f.step for f in frames] == [0, 1, 2]


def test_copies_to_the_host_are_queued_only_where_an_event_tracks_them(monkeypatch):
    """Without CUDA events (CPU, MPS, ...) nothing would tell the delivery thread that a queued
    copy had landed, so the engine makes plain copies there."""
    flags = []
    original = torch.Tensor.copy_

    def spy(self, src, non_blocking=False):
        if sys._getframe(1).f_code.co_name == "_ship":
            flags.append(non_blocking)
        return original(self, src, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", spy)
    model = tiny("mistral")
    with Engine(model, width=32, strict=True) as engine:
        greedy(model, prompt(), 2)
    assert engine.stats["delivered"] == 2
    assert flags == [False] * 8  # pixels, lo, hi, token per frame


def true_positions(model):
    """A pre-hook that records each forward's true last position (cache length + new tokens - 1)."""
    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append((cache.get_seq_length() if cache is not None else 0) + ids.shape[1] - 1)

    return seen, model.register_forward_pre_hook(record, with_kwargs=True)


def test_positions_follow_the_cache_when_it_is_cropped_reset_or_one_of_two():
    """Prompt-lookup decoding crops the cache after rejected guesses; a cache reset() starts a
    new sequence in the same object; classifier-free guidance alternates two caches, one of
    them made by the model itself. Positions come from the cache, steps count per cache."""
    import transformers as tf
    model = tiny("llama")
    seen, handle = true_positions(model)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])
    runs = {}
    try:
        for name in ("lookup", "reset", "guidance"):
            frames = []
            seen.clear()
            with Engine(model, width=16, on_frame=frames.append, strict=True):
                if name == "lookup":
                    model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0,
                                   prompt_lookup_num_tokens=3)
                elif name == "reset":
                    cache = tf.DynamicCache(config=model.config)
                    greedy(model, ids, 3, **{cache_name(model): cache})
                    cache.reset()
                    emptied = cache.get_seq_length() == 0
                    if emptied:  # reset() empties it (transformers 5.2x)
                        greedy(model, ids[:, :4], 3, **{cache_name(model): cache})
                    else:  # before, reset() zeroes the tensors and keeps their length, and
                        # generate runs a forward with no new positions: a clear error (ours in
                        # 5.1x; 4.x's generate fails on its own first)
                        before = len(seen)  # (not len(frames): they arrive on another thread)
                        with pytest.raises((ValueError, IndexError), match="no new positions|index -1"):
                            greedy(model, ids[:, :4], 3, **{cache_name(model): cache})
                        del seen[before:]
                else:
                    greedy(model, ids, 3, guidance_scale=1.5)
            assert [f.position for f in frames] == seen, name
            runs[name] = [f.step for f in frames]
    finally:
        handle.remove()
    assert runs["lookup"] == list(range(len(runs["lookup"]))) and len(runs["lookup"]) < 8  # guesses taken
    assert runs["reset"] == ([0, 1, 2, 0, 1, 2] if emptied else [0, 1, 2])
    assert runs["guidance"] == [0, 0, 1, 1, 2, 2]  # the conditional and unconditional forwards


def test_forwards_that_exit_early_ship_no_frame(caplog):
    """Early-exit drafting (assistant_early_exit) runs the first layers only for its guesses:
    those forwards have no picture, so no frame (counted and said), and every frame shipped is
    a full forward's."""
    model = tiny("llama", num_hidden_layers=4)
    full = []  # the last layer's output at the last token, whenever it runs
    handle = model.model.layers[-1].register_forward_hook(lambda m, a, out: full.append(out[0, -1]))
    frames = []
    try:
        with Engine(model, width=16, norm="reference", reference=(0.0, 0.5), on_frame=frames.append,
                    strict=True) as engine:
            model.generate(prompt(length=8), assistant_early_exit=2, max_new_tokens=6, do_sample=False,
                           pad_token_id=0)
    finally:
        handle.remove()
    assert engine.stats["partial"] > 0 and "without the last decoder layer" in caplog.text
    assert len(frames) == len(full) == engine.stats["captured"]
    assert [f.seq for f in frames] == list(range(len(frames)))
    for frame, last in zip(frames, full):  # the last layer's rows (layout "bands": row % 4 == 3)
        want = render(last[None].float(), width=16, norm="reference", reference=(0.0, 0.5))
        np.testing.assert_array_equal(frame.pixels[3::4], want.pixels.numpy())


def test_reattaching_forgets_the_last_attach_error():
    model = tiny("mistral")
    calls = []

    def fails_once(frame):
        calls.append(frame)
        if len(calls) == 1:
            raise RuntimeError("consumer failed once")

    engine = Engine(model, width=32, on_frame=fails_once, strict=True)
    with pytest.raises(RuntimeError, match="failed once"):
        with engine:
            greedy(model, prompt(), 2)
    with engine:
        greedy(model, prompt(), 2)
    assert engine.error is None and len(calls) == 4


def test_first_attached_under_inference_mode_still_captures_outside_it():
    model = tiny("mistral")
    frames = []
    engine = Engine(model, width=32, on_frame=frames.append, strict=True)
    with torch.inference_mode(), engine:
        greedy(model, prompt(), 2)
    with engine:  # buffers made under inference_mode could not be written here
        greedy(model, prompt(), 2)
    assert len(frames) == 4 and engine.error is None


def test_gemma3n_frames_show_the_active_altup_stream():
    """Gemma 3n's layers return [streams, batch, seq, hidden]; the frame shows stream 0."""
    import transformers as tf
    torch.manual_seed(0)
    config = tf.Gemma3nTextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=[128] * 4, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, laurel_rank=8,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
        activation_sparsity_pattern=[0.0] * 4, layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    seen = []
    first = lambda out: out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4.x
    handles = [layer.register_forward_hook(lambda m, a, out: seen.append(first(out)[0, 0, -1].float()))
               for layer in model.model.layers]
    frames = []
    try:
        with Engine(model, width=16, on_frame=frames.append, strict=True):
            greedy(model, prompt(), 3)
    finally:
        for handle in handles:
            handle.remove()
    assert len(frames) == 3 and len(seen) == 12
    for k, frame in enumerate(frames):
        want = render(torch.stack(seen[4 * k:4 * k + 4]), width=16)
        np.testing.assert_array_equal(frame.pixels, want.pixels.numpy())


def test_a_fixed_reference_range_is_not_blamed_on_the_hooks(caplog):
    """Under a fixed range two steps can quantize alike (here every value far below it): that
    is no sign of stale states."""
    model = tiny("mistral")
    with Engine(model, width=32, norm="reference", reference=(1e3, 2e3)) as engine:
        greedy(model, prompt(), 3)
    assert engine.stats["stale"] == 0 and "repeats the previous frame" not in caplog.text


def test_a_hand_written_loop_with_the_new_cache_name_warns_nothing():
    """transformers 5.2x renamed past_key_values to cache and warns on the old name: the
    Engine reading the output's cache must not make it warn when the user's code does not."""
    import logging

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    kept = Kept()
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process
    logging.getLogger("transformers").addHandler(kept)
    model = tiny("llama")
    frames = []
    try:
        with Engine(model, width=16, on_frame=frames.append, strict=True), torch.no_grad():
            out = model(prompt())
            for _ in range(2):
                out = model(out.logits[:, -1:].argmax(-1), **{cache_name(model): cache_of(out)})
    finally:
        logging.getLogger("transformers").removeHandler(kept)
    assert [(f.step, f.position) for f in frames] == [(0, 4), (1, 5), (2, 6)]
    assert not [m for m in kept.messages if "deprecated" in m]


def test_module_device_from_accelerate_hooks(monkeypatch):
    """accelerate's execution_device ("cuda" without an index, inside a SequentialHook)
    comes back as the device a tensor there would report, so attach can compare it."""
    from types import SimpleNamespace

    from neuralflow.engine.layers import module_device
    layer = torch.nn.Linear(2, 2)
    assert module_device(layer) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for given, expected in (("cuda", "cuda:1"), ("cuda:2", "cuda:2"), ("cpu", "cpu")):
        layer._hf_hook = SimpleNamespace(hooks=[SimpleNamespace(), SimpleNamespace(execution_device=given)])
        assert module_device(layer) == torch.device(expected), given


def test_typical_scale_is_a_quantile_of_each_layers_values():
    from neuralflow.engine import typical_scale
    model = tiny("mistral")
    ids = prompt(length=12)
    seen = []  # the final norm's input: the last layer's output
    handle = model.model.norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states
        lo, hi = typical_scale(model, ids, quantile=0.9, skip=2, limit=6)
        typical_scale(model, ids[:, :1])  # one token: it is used, skip or not
    finally:
        handle.remove()
    assert len(seen) == 1  # typical_scale stopped after the last layer: no final norm, no logits
    outputs = [h[0] for h in hidden[1:-1]] + [seen[0][0]]
    want = torch.stack([torch.quantile(x[2:][-6:].abs().flatten(), 0.9) for x in outputs])
    assert torch.equal(lo, torch.zeros(3)) and torch.allclose(hi, want)


def test_a_hand_written_loop_passing_the_cache_positionally():
    """GPT-2 and Bloom take the cache second, and their classic loop is model(ids, cache): the
    steps still count."""
    for family in ("gpt2", "bloom"):
        model = tiny(family)
        frames = []
        with Engine(model, width=16, on_frame=frames.append, strict=True), torch.no_grad():
            out = model(prompt())
            for _ in range(2):
                out = model(out.logits[:, -1:].argmax(-1), cache_of(out))
        assert [(f.step, f.position) for f in frames] == [(0, 4), (1, 5), (2, 6)], family


def test_a_hand_written_loop_with_tuple_outputs():
    """return_dict=False gives (logits, cache): the cache the prefill made continues it."""
    model = tiny("llama")
    name = cache_name(model)
    frames = []
    with Engine(model, width=16, on_frame=frames.append, strict=True), torch.no_grad():
        logits, cache = model(prompt(), use_cache=True, return_dict=False)[:2]
        for _ in range(2):
            logits, cache = model(logits[:, -1:].argmax(-1), use_cache=True, return_dict=False,
                                  **{name: cache})[:2]
    assert [(f.step, f.position) for f in frames] == [(0, 4), (1, 5), (2, 6)]


def test_a_context_of_one_repeated_token_is_not_called_stale(caplog):
    """Over a context of one token repeated, every position attends to the same values and the
    states repeat for real: not the stale-states error (which blames a compiled model)."""
    model = tiny("llama")
    name = cache_name(model)
    with Engine(model, width=16) as engine, torch.no_grad():
        cache = model(torch.full((1, 4), 7), use_cache=True, return_dict=False)[1]
        for _ in range(4):
            cache = model(torch.full((1, 1), 7), use_cache=True, return_dict=False, **{name: cache})[1]
    assert engine.stats["delivered"] == 5 and engine.stats["stale"] == 0
    assert "not seeing new layer states" not in caplog.text
