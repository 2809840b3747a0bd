"""Capture inside compiled models: the same frames as eager capture (CPU, inductor)."""

import numpy as np
import pytest
import torch

from neuralflow.engine import Engine
from tiny_models import VOCAB, tiny


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


def test_attaching_after_compilation_is_refused():
    model = tiny("mistral", num_hidden_layers=2)
    with pytest.raises(RuntimeError, match="attach the Engine to the uncompiled model first"):
        with Engine(torch.compile(model)):
            pass
    model._compiled_call = torch.compile(model.__call__)  # what transformers' generate caches
    try:
        with pytest.raises(RuntimeError, match="compiled before the Engine was attached"):
            Engine(model).attach()
    finally:
        del model._compiled_call
