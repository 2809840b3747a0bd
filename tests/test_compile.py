"""Capture inside compiled models: the same frames as eager capture (CPU, inductor)."""

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
    """If compiled code ever skipped the layer hooks, the frames would repeat: said, not silent."""
    import neuralflow.engine.capture as capture
    model = tiny("mistral", num_hidden_layers=2)
    original = capture.Engine._capture_layer

    def only_prefill(self, i, last, output):
        if self._step == 0:
            original(self, i, last, output)

    monkeypatch.setattr(capture.Engine, "_capture_layer", only_prefill)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    with Engine(model, width=32) as engine:
        greedy(model, ids, 4)
    assert engine.stats["stale"] == 3
    assert "layer hooks are not running" in caplog.text
