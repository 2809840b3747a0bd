"""Palettes, colorize and differences (neuralflow.viewer.palette) against independent references."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from neuralflow.viewer.frame import Frame, chunks_per_layer
from neuralflow.viewer.palette import (PALETTES, colorize, colorize_array, difference, indexed, layer_map, lut,
                                       next_palette)


def seed_reference(q: int) -> tuple[int, int, int]:
    """DESIGN.md's seed colour, one entry at a time: hue t = q/255 (the lower edge of the
    interval the value stands for), full saturation and value, channels truncated; 255 black."""
    if q == 255:
        return (0, 0, 0)
    return tuple(int(c * 255) for c in colorsys.hsv_to_rgb(q / 255, 1.0, 1.0))


def test_seed_lut_matches_colorsys_wheel():
    expected = np.array([seed_reference(q) for q in range(256)], np.uint8)
    np.testing.assert_array_equal(lut("seed"), expected)
    # a few landmarks of the wheel: red, yellow, green, cyan, blue, magenta
    assert tuple(lut("seed")[0]) == (255, 0, 0)
    assert tuple(lut("seed")[85]) == (0, 255, 0)  # t = 1/3
    assert tuple(lut("seed")[170]) == (0, 0, 255)  # t = 2/3


@pytest.mark.parametrize("shape", [(37, 91), (1, 1), (256, 512), (5, 1823)])
def test_colorize_seed_per_pixel(shape):
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    image = colorize(pixels)
    assert image.mode == "RGB" and image.size == (shape[1], shape[0])
    got = np.asarray(image)
    for q in np.unique(pixels):  # independent reference, one colour per distinct value
        assert (got[pixels == q] == seed_reference(int(q))).all()


@pytest.mark.parametrize("palette", list(PALETTES))
def test_colorize_frame_zoom_and_indexed(palette):
    rng = np.random.default_rng(7)
    frame = Frame(pixels=rng.integers(0, 256, (12, 40), dtype=np.uint8), layers=4, hidden=110)
    table = lut(palette)
    plain = np.asarray(colorize(frame, palette))
    np.testing.assert_array_equal(plain, table[frame.pixels])
    zoomed = colorize_array(frame, palette, zoom=3)
    assert zoomed.shape == (36, 120, 3)
    for dy in range(3):
        for dx in range(3):
            np.testing.assert_array_equal(zoomed[dy::3, dx::3], plain)
    np.testing.assert_array_equal(np.asarray(indexed(frame, palette).convert("RGB")), plain)


@pytest.mark.parametrize("name, first, last, overflow", [
    ("viridis", (68, 1, 84), (253, 231, 37), (255, 255, 255)),
    ("magma", (0, 0, 4), (252, 253, 191), (0, 255, 255)),
    ("gray", (0, 0, 0), (255, 255, 255), (0, 255, 255)),
])
def test_perceptual_ramps(name, first, last, overflow):
    table = lut(name).astype(int)
    assert tuple(table[0]) == first and tuple(table[254]) == last and tuple(table[255]) == overflow
    luma = table[:255] @ np.array([299, 587, 114])
    assert (np.diff(luma) >= -600).all() and luma[-1] > luma[0] + 150_000  # lightness rises, no dips
    assert not (table[:255] == table[255]).all(axis=1).any()  # overflow colour is unused by the ramp


def test_diverging_is_white_in_the_middle_blue_below_red_above():
    table = lut("diverging").astype(int)
    assert tuple(table[128]) == (255, 255, 255)
    assert (table[:128, 2] > table[:128, 0]).all()  # blue side
    assert (table[129:, 0] > table[129:, 2]).all()  # red side


def test_palette_names():
    assert next_palette("seed") == "viridis" and next_palette("gray") == "seed"
    with pytest.raises(ValueError, match="unknown palette"):
        colorize(np.zeros((2, 2), np.uint8), "jet")
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2), np.float32))
    assert all(not t.flags.writeable for t in PALETTES.values())


def reference_drift(frame: Frame, reference: Frame) -> np.ndarray:
    sums, counts = np.zeros(frame.layers), np.zeros(frame.layers)
    for y in range(frame.height):
        for x in range(frame.width):
            layer, dim = frame.locate(y, x)
            if dim is not None:
                sums[layer] += abs(int(frame.pixels[y, x]) - int(reference.pixels[y, x]))
                counts[layer] += 1
    return sums / counts


@pytest.mark.parametrize("layout", ["bands", "layers"])
def test_difference_and_drift(layout):
    rng = np.random.default_rng(3)
    layers, hidden, width = 5, 230, 64  # 4 chunks per layer, the last one padded
    height = layers * chunks_per_layer(hidden, width)
    a = Frame(pixels=rng.integers(0, 256, (height, width), dtype=np.uint8), layers=layers, hidden=hidden, layout=layout)
    b = a.replace(pixels=rng.integers(0, 256, (height, width), dtype=np.uint8))
    picture, drift = difference(b, a)
    d = b.pixels.astype(int) - a.pixels.astype(int)
    np.testing.assert_array_equal(picture, np.clip(128 + d, 0, 255))
    np.testing.assert_allclose(drift, reference_drift(b, a), rtol=1e-6)
    for y in range(height):
        for x in range(width):
            layer, dim = a.locate(y, x)
            assert layer_map(a)[y, x] == (layer if dim is not None else -1)
    same, none = difference(a, a)
    assert (same == 128).all() and (none == 0).all()
    with pytest.raises(ValueError, match="geometry"):
        difference(a, a.replace(layout="bands" if layout == "layers" else "layers"))


def test_difference_shows_in_diverging_palette():
    a = Frame(pixels=np.full((4, 8), 100, np.uint8), layers=4, hidden=8)
    b = a.replace(pixels=np.full((4, 8), 140, np.uint8))
    up, _ = difference(b, a)
    down, _ = difference(a, b)
    assert np.asarray(colorize(up, "diverging"))[0, 0, 0] > np.asarray(colorize(down, "diverging"))[0, 0, 0]
    assert isinstance(colorize(up, "diverging"), Image.Image)
