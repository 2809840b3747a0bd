"""Capture inside compiled models (CPU, inductor): the same frames as eager capture, and what
keeping CUDA graphs needs (static inputs, no graph breaks, nothing compiled during generation)."""

import numpy as np
import pytest
import torch

from torch._dynamo.utils import counters
from transformers import CompileConfig

from neuralflow.engine import Engine
from tiny_models import VOCAB, greedy, tiny


def test_compiled_model_gives_eager_frames_and_detach_stops_writes():
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    eager = []
    with Engine(model, width=32, on_frame=eager.append, strict=True):
        model(ids)
    compiled_frames = []
    engine = Engine(model, width=32, on_frame=compiled_frames.append, strict=True)
    with engine:
        compiled = torch.compile(model)
        compiled(ids)
    assert len(compiled_frames) == 1 and engine.error is None
    np.testing.assert_array_equal(compiled_frames[0].pixels, eager[0].pixels)
    assert compiled_frames[0].token_id == eager[0].token_id
    # detached: the compiled code retraces without the hooks and no longer writes our buffers
    engine._staging.fill_(7.0)
    compiled(ids)
    assert bool((engine._staging == 7.0).all())
    assert len(compiled_frames) == 1


def test_torch_compile_wrapper_is_refused():
    model = tiny("mistral", num_hidden_layers=2)
    with pytest.raises(RuntimeError, match="attach the Engine to the uncompiled model first"):
        with Engine(torch.compile(model)):
            pass


def static_generate(model, ids, new_tokens):
    config = CompileConfig()
    config._compile_all_devices = True  # transformers compiles the decode step on CUDA only
    return greedy(model, ids, new_tokens, cache_implementation="static", compile_config=config)


def test_static_cache_compiled_generate_interleaved_with_uncaptured_runs():
    """transformers' auto-compiled decode step (static cache): uncaptured, captured, uncaptured,
    captured again. Frames equal eager capture; the second captured round compiles nothing new."""
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    new = 5
    eager = []
    with Engine(model, width=32, on_frame=eager.append, strict=True):
        want = greedy(model, ids, new)
    plain = static_generate(model, ids, new)  # compiles the decode step without hooks
    frames = []
    engine = Engine(model, width=32, on_frame=frames.append, strict=True)
    with engine:
        got = static_generate(model, ids, new)  # the hook guards make it retrace with them
    assert torch.equal(got, want) and torch.equal(plain, want)
    assert [f.step for f in frames] == list(range(new))
    for mine, theirs in zip(frames, eager):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
        assert mine.token_id == theirs.token_id
    assert torch.equal(static_generate(model, ids, new), want)  # uncaptured again, no frames
    assert len(frames) == new
    graphs = counters["stats"]["unique_graphs"]
    with engine:
        static_generate(model, ids, new)
    assert len(frames) == 2 * new
    assert counters["stats"]["unique_graphs"] == graphs  # reused the code compiled with the hooks
    for mine, theirs in zip(frames[new:], eager):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    assert [f.seq for f in frames] == list(range(2 * new))
    assert engine.stats["stale"] == 0


def test_stale_frames_from_skipped_hooks_are_reported(monkeypatch, caplog):
    """If the layer states were ever not copied, the frames would repeat: said, not silent."""
    import neuralflow.engine.capture as capture
    model = tiny("mistral", num_hidden_layers=2)
    original = capture.Engine._capture_layer

    def only_prefill(self, i, last, output):  # states copied at the prefill only
        if self._step == 0:
            original(self, i, last, output)
        elif last:
            self._render()

    monkeypatch.setattr(capture.Engine, "_capture_layer", only_prefill)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    with Engine(model, width=32) as engine:
        greedy(model, ids, 4)
    assert engine.stats["stale"] == 3
    assert "not seeing new layer states" in caplog.text


def test_forwards_whose_hooks_never_ran_are_reported_not_shipped(monkeypatch, caplog):
    """A forward whose last layer's hook did not run (an early-exit draft; compiled code that
    skips the hooks) ships no frame, and that is said, not silent."""
    import neuralflow.engine.capture as capture
    model = tiny("mistral", num_hidden_layers=2)
    original = capture.Engine._layer_hook

    def prefill_only(self, i):
        hook = original(self, i)
        return lambda module, args, output: hook(module, args, output) if self._step == 0 else None

    monkeypatch.setattr(capture.Engine, "_layer_hook", prefill_only)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    frames = []
    with Engine(model, width=32, on_frame=frames.append) as engine:
        greedy(model, ids, 4)
    assert [f.step for f in frames] == [0] and [f.seq for f in frames] == [0]
    assert engine.stats["partial"] == 3 and engine.stats["captured"] == 1
    assert "without the last decoder layer's hook running" in caplog.text


def cuda_graph_hazards(model, ids, capture, how="static"):
    """Compile the model inside the context manager `capture`, with a spy backend that looks for
    the two things that cost CUDA graphs under inductor: graph inputs that the graph writes but
    that are not static (fixed-address) inputs, which make it skip CUDA graphs ("mutated
    inputs"), one list of shapes per compiled graph; and static inputs whose address changes
    from one call to the next, which make it re-record the graph on every call (the shapes).
    how="static": transformers' compiled static-cache decode step (5 tokens: several compiled
    calls per graph); how="user": torch.compile(model) called twice on the prompt."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    found, moved = [], []

    def forward_compiler(gm, example_inputs):
        meta = torch._guards.TracingContext.get().fw_metadata
        static = set(meta.static_input_indices)
        found.append([tuple(example_inputs[i].shape) for i, info in enumerate(meta.input_info)
                      if info.mutates_data and i not in static])
        run, seen = make_boxed_func(gm.forward), {}

        def spy_run(args):  # a static input at a new address makes CUDA graphs re-record
            for i in static:
                if isinstance(args[i], torch.Tensor):
                    if seen.setdefault(i, args[i].data_ptr()) != args[i].data_ptr():
                        moved.append(tuple(args[i].shape))
            return run(args)

        spy_run._boxed_call = True
        return spy_run

    spy = aot_autograd(fw_compiler=forward_compiler)
    config = CompileConfig(backend=spy)
    config._compile_all_devices = True
    torch._dynamo.reset()
    with capture, torch.no_grad():
        if how == "static":
            greedy(model, ids, 5, cache_implementation="static", compile_config=config)
        else:
            for _ in range(2):
                torch.compile(model, backend=spy)(ids, use_cache=False)
    torch._dynamo.reset()
    return found, moved


PLAIN = torch.zeros(64)  # the control's plain tensor, written by a hook


@pytest.mark.parametrize("how", ["static", "user"])
@pytest.mark.parametrize("control", [False, True])
def test_compiled_code_writes_only_static_inputs(control, how):
    """The precondition for keeping CUDA graphs (issue 7), checked on the CPU: every buffer the
    hooks write inside the compiled code (transformers' static-cache decode step, or a user's
    torch.compile(model)) is a static input, like the KV cache. The control is issue 7's
    failing case, a hook that writes a plain (global) tensor: the check must find that tensor."""
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    frames = []

    def write_plain(module, args, output):
        PLAIN.copy_(output[0, -1])

    capture = (model.model.layers[0].register_forward_hook(write_plain) if control  # removed on exit
               else Engine(model, width=32, on_frame=frames.append, strict=True))
    found, moved = cuda_graph_hazards(model, ids, capture, how)
    assert found and len(frames) == (0 if control else 5 if how == "static" else 2)
    assert all(shapes == ([(64,)] if control else []) for shapes in found), found
    assert moved == [], moved  # e.g. a hook reading this step's input_ids through an attribute


def test_compiled_frame_math_nests_in_a_fullgraph_decode_step(monkeypatch):
    """On CUDA the hook calls the torch.compile'd frame math from inside transformers' compiled
    decode step: it must inline there without a graph break (fullgraph) and draw eager's frames."""
    import neuralflow.engine.capture as capture
    monkeypatch.setattr(capture, "fused_by_default", lambda device: True)  # the CUDA path
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(5))
    eager = []
    with Engine(model, width=32, on_frame=eager.append, strict=True):
        greedy(model, ids, 4)
    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True
    frames = []
    breaks = sum(counters["graph_break"].values())
    with Engine(model, width=32, on_frame=frames.append, strict=True):
        greedy(model, ids, 4, cache_implementation="static", compile_config=config)
    assert sum(counters["graph_break"].values()) == breaks and len(frames) == 4
    for mine, theirs in zip(frames, eager):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)


def test_frame_math_compiles_at_attach_not_during_generation(monkeypatch):
    """With the compiled frame math (the CUDA path), attaching compiles it, so the first watched
    forward does not stall; the "reference" norm's two variants (its first frame renders as
    "seed") are both ready."""
    import neuralflow.engine.capture as capture
    monkeypatch.setattr(capture, "fused_by_default", lambda device: True)  # the CUDA path
    torch._dynamo.reset()  # nothing compiled by earlier tests (or an earlier run of this one)
    model = tiny("mistral", num_hidden_layers=2, hidden_size=96)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(6))
    frames = []
    engine = Engine(model, width=32, norm="reference", on_frame=frames.append, strict=True)
    before = counters["stats"]["unique_graphs"]
    engine.attach()
    try:
        attached = counters["stats"]["unique_graphs"]
        greedy(model, ids, 3)
    finally:
        engine.detach()
    assert attached == before + 2  # "seed" and "reference"
    assert counters["stats"]["unique_graphs"] == attached and len(frames) == 3


def test_frame_math_that_will_not_compile_runs_eagerly(monkeypatch, caplog):
    """No working compiler (no triton on a GPU box, say): attach warns and the hooks run the
    same math as eager ops; capture goes on and the frames are the same."""
    import importlib
    import neuralflow.engine.capture as capture
    render_module = importlib.import_module("neuralflow.engine.render")  # (the package's `render` is the function)
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(7))
    eager = []
    with Engine(model, width=32, on_frame=eager.append, strict=True):
        greedy(model, ids, 3)

    def broken(*args):
        raise RuntimeError("inductor: no working C++ compiler")

    monkeypatch.setattr(capture, "fused_by_default", lambda device: True)
    monkeypatch.setattr(render_module, "_fused", broken)
    frames = []
    with Engine(model, width=32, on_frame=frames.append, strict=True) as engine:
        greedy(model, ids, 3)
    assert "compiling the frame math failed" in caplog.text and engine.error is None
    assert len(frames) == 3
    for mine, theirs in zip(frames, eager):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)


def test_a_new_engine_reuses_the_compiled_step_and_writes_its_own_buffers():
    """The benchmarks attach a fresh Engine per run: the decode step compiled with an earlier
    Engine's hooks is reused (no recompiling), and it fills the new Engine's buffers, not the
    old one's (which would deliver stale or empty frames)."""
    model = tiny("mistral", num_hidden_layers=2)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(8))
    eager = []
    with Engine(model, width=32, on_frame=eager.append, strict=True):
        greedy(model, ids, 4)
    runs = []
    for _ in range(2):
        frames = []
        with Engine(model, width=32, on_frame=frames.append, strict=True) as engine:
            static_generate(model, ids, 4)
        runs.append((frames, counters["stats"]["unique_graphs"], engine))
    (_, graphs, first), (frames, graphs_after, second) = runs
    assert graphs_after == graphs and second._staging.data_ptr() != first._staging.data_ptr()
    assert len(frames) == 4 and second.stats["stale"] == 0
    for mine, theirs in zip(frames, eager):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
