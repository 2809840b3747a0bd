"""Frame geometry and value ranges: what the viewer's hover text says about a pixel."""

import numpy as np
import pytest

from neuralflow.viewer.frame import Frame


def frame(layout):
    pixels = np.zeros((3 * 2, 4), np.uint8)  # 3 layers, hidden 6, width 4: 2 chunks per layer
    return Frame(pixels=pixels, layers=3, hidden=6, layout=layout,
                 lo=np.array([1.0, 2.0, -1.0], np.float32), hi=np.array([2.0, 4.0, 1.0], np.float32))


@pytest.mark.parametrize("layout,row,layer,chunk", [
    ("bands", 0, 0, 0), ("bands", 2, 2, 0), ("bands", 3, 0, 1), ("bands", 5, 2, 1),
    ("layers", 0, 0, 0), ("layers", 1, 0, 1), ("layers", 4, 2, 0), ("layers", 5, 2, 1),
])
def test_locate(layout, row, layer, chunk):
    f = frame(layout)
    assert f.locate(row, 1) == (layer, chunk * 4 + 1)
    if chunk == 1:
        assert f.locate(row, 2) == (layer, None)  # dims 6, 7 are padding


def test_value_range():
    f = frame("layers")
    f.pixels[0, 0], f.pixels[0, 1], f.pixels[0, 2], f.pixels[4, 0] = 0, 51, 255, 200
    assert f.value_range(0, 0) == (0.0, pytest.approx(1 + 1 / 255))  # below lo counts as 0 too
    low, high = f.value_range(0, 1)
    assert low == pytest.approx(1.2) and high == pytest.approx(1 + 52 / 255)
    assert f.value_range(0, 2) is None  # the overflow mark
    low, high = f.value_range(4, 0)  # layer 2: lo = -1, |x| is never negative
    assert low == pytest.approx(-1 + 200 * 2 / 255) and high == pytest.approx(-1 + 201 * 2 / 255)
    f.pixels[4, 1] = 10
    assert f.value_range(4, 1)[0] == 0.0
