"""Run-to-run spread and the error-bar comparison of chapter 10, against numpy by hand."""
import math

import numpy as np
import pytest
import torch

from ranem.metrics import compare_spread, pooled, results_table, spread


def test_spread_equals_numpy_and_drops_nan():
    v = [0.602, 0.581, 0.595, 0.597, 0.582, float("nan")]  # the paper's Table 8, and a missing run
    s = spread(torch.tensor(v))
    arr = np.array(v[:5])
    assert s.n == 5 and s.mean == pytest.approx(arr.mean()) and s.std == pytest.approx(arr.std(ddof=1))
    assert s.sem == pytest.approx(arr.std(ddof=1) / math.sqrt(5)) and (s.low, s.high) == pytest.approx((0.581, 0.602))
    assert "± " in str(s)


def test_one_value_has_no_error_bar_and_bad_input_is_refused():
    s = spread([0.5])
    assert s.n == 1 and math.isnan(s.std) and math.isnan(s.sem)
    with pytest.raises(ValueError, match="no number"):
        spread([float("nan")])
    with pytest.raises(ValueError, match="finite"):
        spread([1.0, float("inf")])
    with pytest.raises(ValueError, match="z must be"):
        compare_spread([1, 2], [3, 4], z=0)


def test_compare_spread_is_the_difference_over_its_standard_error():
    a, b = [0.50, 0.52, 0.51], [0.60, 0.61, 0.62]
    c = compare_spread(a, b)
    sa, sb = spread(a), spread(b)
    assert c.difference == pytest.approx(sb.mean - sa.mean)
    assert c.error == pytest.approx(math.hypot(sa.sem, sb.sem)) and c.exceeds and c.ratio > 2
    same = compare_spread(a, [0.51, 0.50, 0.52])
    assert not same.exceeds and same.difference == pytest.approx(0)
    # A single value on one side: the other side's error alone; on both sides: nothing to compare with.
    assert compare_spread([0.5], b).error == pytest.approx(sb.sem)
    lone = compare_spread([0.5], [0.6])
    assert math.isnan(lone.error) and not lone.exceeds
    assert compare_spread(sa, sb) == c  # summaries are accepted as they are


def test_pooled_concatenates_per_image_values_and_averages_single_numbers():
    runs = [{"faithfulness": torch.tensor([0.1, 0.2]), "time": 0.01},
            {"faithfulness": np.array([0.3, 0.4, 0.5]), "time": 0.03}]
    out = pooled(runs, ["faithfulness", "time"])
    assert out["faithfulness"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert out["time"] == pytest.approx(0.02)
    table = results_table({"a": out, "b": out}, reference="a")
    assert table.mean["a", "faithfulness"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="non-empty list"):
        pooled([], ["time"])
    with pytest.raises(ValueError, match="one value per image"):
        pooled([{"m": np.zeros((2, 2))}], ["m"])
