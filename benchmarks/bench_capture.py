"""pytest-benchmark versions of the capture benchmarks: the frame op, and generate with/without capture.

    pytest benchmarks/bench_capture.py --benchmark-enable                 # timed, with a table
    pytest benchmarks/bench_capture.py --benchmark-enable --benchmark-group-by=group

Groups: "frame-op" (the [32, 4096] frame, ours = render_into with preallocated buffers against
the plain eager-torch math; on CUDA when available, else the CPU) and "generate" (the CI model,
8 layers x 1024 hidden, 16 new greedy tokens, without capture and with an Engine publishing to a
live subscriber process), and "layer-hook" (one decoder layer's capture hook, host time).
Compare means within a group. For the interleaved, noise-aware
numbers reported in RESULTS.md run `python -m neuralflow.benchmarks.suite` instead.
On the CPU torch runs on one thread here, as in the suite (see suite.py). With the project's
default --benchmark-disable each benchmark runs once (a smoke test).
"""

import pytest
import torch

from neuralflow.benchmarks.baselines import eager_frame
from neuralflow.benchmarks.listener import Listener, free_endpoint
from neuralflow.benchmarks.models import PRESETS, build, greedy_kwargs, prompt_ids
from neuralflow.engine import Engine
from neuralflow.engine.render import frame_shape, render_into

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEW_TOKENS = 16


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One torch thread on the CPU, as the suite does (OpenMP workers collapse on a busy machine)."""
    threads = torch.get_num_threads()
    if DEVICE == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # sync point: end of a timed call


@pytest.fixture(scope="module")
def states():
    return torch.randn(32, 4096, generator=torch.Generator().manual_seed(0)).to(DEVICE)


@pytest.fixture(scope="module")
def model_and_ids():
    model = build(PRESETS["ci"], DEVICE, torch.bfloat16 if DEVICE == "cuda" else torch.float32)
    return model, prompt_ids(model, 16)


@pytest.mark.benchmark(group="frame-op")
def test_frame_op_neuralflow(benchmark, states):
    pixels = torch.empty(frame_shape(32, 4096), dtype=torch.uint8, device=DEVICE)
    lo, hi = torch.empty(32, device=DEVICE), torch.empty(32, device=DEVICE)

    def one():
        render_into(states, pixels, lo, hi)
        _sync()

    one()  # compiles on CUDA
    benchmark(one)
    assert torch.equal(pixels, eager_frame(states))


@pytest.mark.benchmark(group="frame-op")
def test_frame_op_eager(benchmark, states):
    def one():
        out = eager_frame(states)
        _sync()
        return out

    assert benchmark(one).shape == (256, 512)


def _generate(model, ids):
    out = model.generate(ids, **greedy_kwargs(NEW_TOKENS))
    _sync()
    return out


@pytest.mark.benchmark(group="generate")
def test_generate_without_capture(benchmark, model_and_ids):
    model, ids = model_and_ids
    out = benchmark.pedantic(_generate, args=(model, ids), rounds=5, warmup_rounds=1)
    assert out.shape[1] == ids.shape[1] + NEW_TOKENS


@pytest.mark.benchmark(group="generate")
def test_generate_with_capture(benchmark, model_and_ids):
    model, ids = model_and_ids
    with Listener(free_endpoint()) as listener:
        with Engine(model, publish=listener.endpoint) as engine:
            assert engine.publisher.wait_for_subscribers(1, timeout=10.0)
            benchmark.pedantic(_generate, args=(model, ids), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(engine=dict(engine.stats), subscriber=listener.stats)
    assert engine.error is None and engine.stats["captured"] > 0
    assert listener.stats.get("received", 0) > 0


@pytest.mark.benchmark(group="layer-hook")
def test_layer_hook_call(benchmark, model_and_ids):
    """The host time of one decoder layer's capture hook in eager mode (Mistral 7B calls it 32
    times per token): the layer output's last token copied into the staging buffer."""
    model, _ = model_and_ids
    engine = Engine(model)
    engine.attach()
    try:
        hook = engine._layer_hooks[0]
        output = torch.randn(1, 5, engine.hidden, device=DEVICE, dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            benchmark(hook, None, None, output)
        assert torch.equal(engine._staging[0], output[0, -1].float())
    finally:
        engine.detach()
