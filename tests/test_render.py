"""render() against an independent plain-numpy version of the seed math in DESIGN.md."""

import math

import numpy as np
import pytest
import torch

from neuralflow.engine import render
from neuralflow.engine.render import _frame_math, _host_frame_math, frame_shape, render_into, square_width

SEED = np.random.SeedSequence().entropy  # fresh inputs every run
RNG = np.random.default_rng(SEED)


@pytest.fixture(autouse=True)
def show_seed():
    print(f"tests/test_render.py inputs from numpy seed {SEED}")  # shown when a test fails


def reference_stats(x, norm):
    """lo, hi per layer in float64, finite entries only, unbiased variance, spread 25."""
    layers = x.shape[0]
    if norm == "seed":
        values = x[np.isfinite(x)]
        m, v = values.mean(), values.var(ddof=1)
        return np.full(layers, m - 25 * v), np.full(layers, m + 25 * v)
    lo, hi = np.empty(layers), np.empty(layers)
    for i, row in enumerate(x):
        values = row[np.isfinite(row)]
        m, v = values.mean(), values.var(ddof=1)
        lo[i], hi[i] = m - 25 * v, m + 25 * v
    return lo, hi


def reference_frame(x, lo, hi, width, layout, dtype=np.float64):
    """Quantize and tile pixel by pixel, the slow obvious way."""
    layers, hidden = x.shape
    x, lo, hi = x.astype(dtype), lo.astype(dtype), hi.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        t = (np.abs(x) - lo[:, None]) / (hi - lo)[:, None]
        q = np.floor(t * dtype(255))
    q = np.clip(q, 0, 254)
    q[(t >= 1) | np.isnan(t)] = 255
    chunks = math.ceil(hidden / width)
    image = np.full((layers * chunks, width), 255, np.uint8)
    for r in range(layers * chunks):
        layer, chunk = (r % layers, r // layers) if layout == "bands" else (r // chunks, r % chunks)
        dims = q[layer, chunk * width:(chunk + 1) * width]
        image[r, :len(dims)] = dims
    return image


def states(layers, hidden, outliers=True):
    x = RNG.standard_normal((layers, hidden)) * 0.05
    if outliers:  # a few massive dims, as real LLM residual streams have
        dims = RNG.choice(hidden, size=min(4, hidden), replace=False)
        x[:, dims] *= RNG.uniform(20, 200, size=len(dims))
    return x.astype(np.float32)


def assert_off_by_one_rarely(got: np.ndarray, want: np.ndarray) -> None:
    """Pixels equal but for a level boundary's rounding: at most one level off, in at most one
    pixel per thousand (one pixel, for pictures smaller than that)."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= max(1, diff.size // 1000)


SHAPES = [(32, 4096), (28, 3584), (24, 2560), (3, 1000), (1, 512), (80, 1000), (2, 7)]


@pytest.mark.parametrize("layers,hidden", SHAPES)
@pytest.mark.parametrize("layout", ["bands", "layers"])
@pytest.mark.parametrize("norm", ["seed", "layer"])
def test_matches_numpy_seed_math(layers, hidden, layout, norm):
    x = states(layers, hidden)
    got = render(torch.from_numpy(x), layout=layout, norm=norm)
    lo, hi = reference_stats(x.astype(np.float64), norm)
    np.testing.assert_allclose(got.lo.numpy(), lo, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.hi.numpy(), hi, rtol=1e-4, atol=1e-6)
    want = reference_frame(x, lo, hi, 512, layout)
    assert got.pixels.dtype == torch.uint8
    assert got.pixels.shape == (layers * math.ceil(hidden / 512), 512)
    # float32 statistics may put a value on the other side of a level boundary
    assert_off_by_one_rarely(got.pixels.numpy(), want)
    # with the same float32 lo/hi, quantization and tiling are exact
    same = reference_frame(x, got.lo.numpy(), got.hi.numpy(), 512, layout, dtype=np.float32)
    np.testing.assert_array_equal(got.pixels.numpy(), same)


@pytest.mark.parametrize("layout", ["bands", "layers"])
def test_reference_norm_uses_given_stats(layout):
    x = states(8, 1000)
    lo = RNG.uniform(-0.2, 0.0, size=8).astype(np.float32)
    hi = (lo + RNG.uniform(0.1, 1.0, size=8)).astype(np.float32)
    got = render(torch.from_numpy(x), width=128, layout=layout, norm="reference", reference=(lo, hi))
    np.testing.assert_array_equal(got.lo.numpy(), lo)
    want = reference_frame(x, lo, hi, 128, layout, dtype=np.float32)
    np.testing.assert_array_equal(got.pixels.numpy(), want)
    # a Picture works as a reference too: the same stats give the same frame
    again = render(torch.from_numpy(x), width=128, layout=layout, norm="reference", reference=got)
    assert torch.equal(again.pixels, got.pixels)


def test_seed_geometry_mistral_7b():
    got = render(torch.randn(32, 4096))
    assert tuple(got.pixels.shape) == (256, 512)
    # band layout: row r is layer r % 32, dims 512 * (r // 32) onward
    x = torch.zeros(32, 4096)
    x[5, 512 * 3 + 7] = 1e6  # one huge value, far above hi: overflow mark at one pixel
    pixels = render(x, norm="reference", reference=(0.0, 2.0)).pixels
    assert pixels[3 * 32 + 5, 7] == 255
    assert (pixels == 255).sum() == 1


def test_padding_and_overflow_are_255_and_small_values_0():
    x = torch.zeros(2, 600)
    x[0, 0] = 5.0  # above hi: overflow
    x[1, 1] = 0.5  # mid range
    got = render(x, layout="layers", norm="reference", reference=(0.0, 1.0))
    p = got.pixels
    assert p.shape == (4, 512)
    assert p[0, 0] == 255
    assert (p[1, 600 - 512:] == 255).all() and (p[3, 600 - 512:] == 255).all()  # padding
    assert p[2, 1] == 127 and p[2, 2] == 0


def test_below_lo_maps_to_zero():
    lo, hi = np.float32(1.0), np.float32(2.0)
    got = render(torch.tensor([[0.5, 1.0, 1.5, 2.0, 9.0]]), width=5, norm="reference", reference=(lo, hi))
    assert got.pixels.tolist() == [[0, 0, 127, 255, 255]]


def test_non_finite_states_give_the_mark_not_an_exception():
    x = torch.from_numpy(states(4, 1000))
    x[1, 3], x[2, 10], x[3, 999] = float("nan"), float("inf"), float("-inf")
    got = render(x, layout="layers")
    assert torch.isfinite(got.lo).all() and torch.isfinite(got.hi).all()
    p = got.pixels
    assert p[2, 3] == 255 and p[4, 10] == 255 and p[7, 999 - 512] == 255
    clean = x.clone()
    clean[1, 3] = clean[2, 10] = clean[3, 999] = 0.0
    mask = torch.ones_like(p, dtype=torch.bool)
    mask[2, 3] = mask[4, 10] = mask[7, 999 - 512] = False
    # the finite pixels follow the finite-only statistics
    want = reference_frame(clean.numpy(), got.lo.numpy(), got.hi.numpy(), 512, "layers", np.float32)
    np.testing.assert_array_equal(p.numpy()[mask.numpy()], want[mask.numpy()])


def test_constant_states_do_not_divide_by_zero():
    got = render(torch.full((3, 100), 0.5), width=50)
    assert got.pixels.shape == (6, 50)
    assert torch.isfinite(got.lo).all()
    assert (got.pixels == 0).all()  # every value at the bottom of an empty range, no NaN cast


def test_the_default_width_is_the_seed_width():
    """512 for Mistral 7B's 32 x 4096 (what README and --help promise), and the smallest power of
    two at least the square root elsewhere."""
    assert [square_width(*shape) for shape in ((32, 4096), (4, 256), (3, 100), (1, 1), (40, 5120))] \
        == [512, 32, 32, 1, 512]


def test_bf16_states_and_same_device():
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    got = render(x, width=64)
    want = render(x.float(), width=64)
    assert torch.equal(got.pixels, want.pixels)
    assert got.pixels.device == x.device


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "spiral"}, "layout"),
    ({"norm": "global"}, "norm"),
    ({"width": 0}, "width"),
    ({"norm": "reference"}, "reference"),
    ({"norm": "reference", "reference": (np.zeros(3), np.ones(3))}, "1 or 4"),
])
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(torch.randn(4, 64), **kwargs)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="layers, hidden"):
        render(torch.randn(64))


@pytest.mark.parametrize("layers,hidden,width,layout,norm", [
    (7, 1823, 100, "bands", "seed"), (3, 1000, 512, "layers", "layer"),
])
def test_compiled_frame_op_equals_eager(layers, hidden, width, layout, norm):
    """The torch.compile'd function the engine runs on CUDA, here compiled for the CPU."""
    x = torch.from_numpy(states(layers, hidden))
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    want = render(x, width=width, layout=layout, norm=norm)
    pixels = torch.empty(frame_shape(layers, hidden, width), dtype=torch.uint8)
    lo, hi = torch.empty(layers), torch.empty(layers)
    render_into(x, pixels, lo, hi, width=width, layout=layout, norm=norm, fuse=True)
    # (fused float32 arithmetic rounds differently: a value on a level boundary may tip over)
    assert_off_by_one_rarely(pixels.numpy(), want.pixels.numpy())
    torch.testing.assert_close(lo, want.lo, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hi, want.hi, rtol=1e-5, atol=1e-7)


def _both_paths(x, width, layout, norm, ref=(None, None)):
    """(host path, masked path) outputs: pixels, lo, hi for the same inputs."""
    layers, hidden = x.shape
    outs = []
    for math_fn in (_host_frame_math, _frame_math):
        out = (torch.full(frame_shape(layers, hidden, width), 7, dtype=torch.uint8),
               torch.full((layers,), 7.0), torch.full((layers,), 7.0))
        math_fn(x, *ref, *out, width, layout, norm)
        outs.append(out)
    return outs


@pytest.mark.parametrize("layers,hidden,width", [(32, 4096, 512), (3, 1000, 512), (2, 7, 3), (5, 1, 4)])
@pytest.mark.parametrize("layout", ["bands", "layers"])
@pytest.mark.parametrize("norm", ["seed", "layer", "reference"])
def test_cpu_fast_path_is_the_masked_math_bit_for_bit(layers, hidden, width, layout, norm):
    """The CPU's fast path skips the NaN/inf masking on finite states: same frame, same stats."""
    x = torch.from_numpy(states(layers, hidden))
    ref = (torch.full((layers,), -0.05), torch.linspace(0.1, 2.0, layers))
    host, masked = _both_paths(x, width, layout, norm, ref)
    for got, want in zip(host, masked):
        assert torch.equal(got, want)


@pytest.mark.parametrize("norm", ["seed", "layer", "reference"])
@pytest.mark.parametrize("poison", ["nan", "inf", "-inf", "huge"])
def test_cpu_fast_path_falls_back_on_non_finite_values(norm, poison):
    """NaN/inf states, or statistics that overflow float32 (hi - lo = inf), take the masked
    math: the overflow mark where the fast path's arithmetic would make NaN."""
    x = torch.from_numpy(states(4, 300))
    if poison == "huge":  # variance ~1e76: lo, hi overflow to -inf, +inf
        x[2, 17] = 3e37
    else:
        x[2, 17] = float(poison)
    ref = (torch.full((4,), -float("inf")), torch.full((4,), float("inf"))) if poison == "huge" \
        else (torch.zeros(4), torch.ones(4))
    host, masked = _both_paths(x, 128, "bands", norm, ref)
    assert torch.equal(host[0], masked[0])
    torch.testing.assert_close(host[1], masked[1], equal_nan=True)
    torch.testing.assert_close(host[2], masked[2], equal_nan=True)
    assert host[0][(17 // 128) * 4 + 2, 17 % 128] == 255  # bands: row = chunk * layers + layer


@pytest.mark.parametrize("norm", ["seed", "layer"])
def test_huge_finite_states_give_the_same_stats_on_both_paths(norm):
    """A blown-up fine-tune: finite states near 3e19, whose mean squared overflows float32.
    Both paths give the same, finite statistics (the masked math once made 0 * inf = NaN)."""
    x = torch.from_numpy(states(4, 64)) * 1e17 + 3e19
    host, masked = _both_paths(x, 16, "bands", norm, (torch.zeros(4), torch.ones(4)))
    for got, want in zip(host, masked):
        assert torch.equal(got, want)
    assert torch.isfinite(masked[1]).all() and torch.isfinite(masked[2]).all()
