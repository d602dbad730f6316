"""The Normalized Difference node: means of each score list, then the paper's ND."""
import math

import pytest

from science_t2i import NODE_CLASS_MAPPINGS
from science_t2i.nodes.errors import ScienceT2IError


def test_nd_node_averages_every_image_then_applies_the_formula():
    node = NODE_CLASS_MAPPINGS["ScienceT2I_NormalizedDifference"]()
    # INPUT_IS_LIST: each input arrives as a list (one FLOAT per image)
    out = node.compute([20.0, 22.0], [26.0, 26.0], [18.0, 20.0])
    ip, ep, sp = 21.0, 26.0, 19.0
    expected = 100 * (ip - sp) / (ep - sp)  # 28.571...
    assert out["result"][0] == pytest.approx(expected)
    assert "ND 28.6" in out["result"][1] and out["ui"]["text"] == [out["result"][1]]


def test_nd_node_undefined_and_bad_inputs():
    node = NODE_CLASS_MAPPINGS["ScienceT2I_NormalizedDifference"]()
    out = node.compute([1.0], [2.0], [2.0])
    assert math.isnan(out["result"][0]) and "undefined" in out["result"][1]
    with pytest.raises(ScienceT2IError, match="no scores"):
        node.compute([], [2.0], [1.0])
    with pytest.raises(ScienceT2IError, match="NaN"):
        node.compute([float("nan")], [2.0], [1.0])
