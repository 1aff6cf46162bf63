"""Wilcoxon against scipy, the results table against numpy, explain_time's protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ranem.metrics import evaluate, explain_time, results_table, wilcoxon


@settings(max_examples=40, deadline=None)
@given(st.integers(6, 60), st.integers(0, 2**32 - 1), st.sampled_from([None, 0, 1]))
def test_wilcoxon_equals_scipy(n, seed, decimals):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    if decimals is not None:  # rounding makes ties and zero differences
        a, b = a.round(decimals), b.round(decimals)
    if np.all(a == b):
        assert wilcoxon(a, b).pvalue == 1.0
        return
    ref = scipy.stats.wilcoxon(a, b, alternative="two-sided")
    got = wilcoxon(torch.tensor(a), b)
    assert got.pvalue == pytest.approx(ref.pvalue) and got.statistic == pytest.approx(ref.statistic)


def test_wilcoxon_drops_nan_pairs_and_checks_inputs():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 7.0, 9.0])
    b = np.array([0.5, 2.5, 1.0, 3.0, 4.0, 6.5, 1.0])
    got = wilcoxon(a, b)
    ref = scipy.stats.wilcoxon(a[~np.isnan(a)], b[~np.isnan(a)])
    assert got.n == 6 and got.pvalue == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError, match="paired"):
        wilcoxon([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        wilcoxon(np.zeros((2, 2)), np.zeros((2, 2)))


def test_results_table_means_errors_and_significance():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(0.5, 0.1, 30), rng.normal(0.3, 0.1, 30)
    results = {"A": {"faithfulness": good, "sensitivity": rng.random(30), "time": 0.01},
               "B": {"faithfulness": torch.tensor(bad), "sensitivity": rng.random(30) + 1, "time": 0.5}}
    table = results_table(results)
    assert table.mean["B", "faithfulness"] == pytest.approx(bad.mean())
    assert table.sem["A", "faithfulness"] == pytest.approx(good.std(ddof=1) / math.sqrt(30))
    assert table.reference == {"faithfulness": "A", "sensitivity": "A", "time": "A"}
    assert table.pvalue["B", "faithfulness"] == pytest.approx(scipy.stats.wilcoxon(bad, good).pvalue)
    assert ("B", "time") not in table.pvalue  # single numbers are reported, not tested
    text = str(table)
    assert "(ref)" in text and "***" in text and "0.0100" in text
    assert "<table>" in table._repr_html_() and table.to_markdown().startswith("| method")
    fixed = results_table(results, reference="B")
    assert fixed.reference["faithfulness"] == "B" and ("A", "faithfulness") in fixed.pvalue
    assert results_table(results, reference=None).pvalue == {}


def test_results_table_randomisation_best_is_closest_to_zero():
    results = {"A": {"randomisation": np.array([0.9, 0.8, 0.85])},
               "B": {"randomisation": np.array([-0.05, 0.02, 0.01])},
               "C": {"randomisation": np.array([-0.5, -0.6, -0.4])}}
    assert results_table(results).reference["randomisation"] == "B"


def test_results_table_bad_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        results_table({})
    with pytest.raises(ValueError, match="reference"):
        results_table({"A": {"faithfulness": [1.0, 2.0]}}, reference="Z")


def test_explain_time_protocol():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(4, 3, 2, 2)
    calls = []

    def explainer(m, batch, target=None):
        calls.append((batch.shape[0], target.clone()))
        return batch.sum(1)

    out = explain_time(explainer, model, x, repeats=2, warmup=1)
    assert [c[0] for c in calls] == [1] + [1] * 8 + [4]  # warm-up, 4 images x 2 repeats, one batched call
    for (_, target), i in zip(calls[1:9], np.repeat(np.arange(4), 2)):
        assert torch.equal(target, model(x[i:i + 1]).argmax(1))  # label from the timed forward pass
    assert out["images"] == 4 and out["per_image"] > 0 and out["batched_per_image"] > 0
    assert out["images_per_second"] == pytest.approx(1 / out["batched_per_image"])
    with pytest.raises(ValueError, match="repeats"):
        explain_time(explainer, model, x, repeats=0)


def test_evaluate_collects_every_metric_per_image():
    from ranem.baselines import saliency
    from ranem.metrics import avg_sensitivity, faithfulness, mprt
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(5, 3, 8, 8)
    out = evaluate(saliency, model, x, steps=8, robust=3, sensitivity_samples=2, time_images=2, explain_batch=2)
    maps = saliency(model, x)
    torch.testing.assert_close(out["attribution"], maps)
    torch.testing.assert_close(out["faithfulness"], faithfulness(model, x, maps, steps=8))
    assert out["insertion"].shape == (5, 9) and out["deletion"].shape == (5, 9)
    torch.testing.assert_close(out["sensitivity"], avg_sensitivity(saliency, model, x[:3], samples=2))
    torch.testing.assert_close(out["randomisation"], mprt(saliency, model, x[:3]))
    assert out["time"] > 0 and out["explain_seconds"] > 0


def test_explain_time_lets_a_nem_predict_its_own_label():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    targets = []

    def nem_like(m, batch, target=None):
        targets.append(target)
        return batch.sum(1)

    nem_like.predicts_label = True
    explain_time(nem_like, model, torch.randn(2, 3, 2, 2), warmup=0)
    assert targets == [None, None, None]


def test_compare_times_is_round_robin_and_returns_medians():
    from ranem.metrics import compare_times
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    order = []

    def make(name):
        def fn(m, batch, target=None):
            order.append(name)
            return batch.sum(1)
        return fn

    out = compare_times({"a": make("a"), "b": make("b")}, model, x, rounds=2, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 4  # warm-ups, then 2 rounds x 2 images, interleaved
    assert set(out) == {"a", "b"} and all(v > 0 for v in out.values())
    with pytest.raises(TypeError, match="explainers"):
        compare_times({}, model, x)


def test_results_table_skips_the_test_when_no_pair_is_defined():
    from ranem.metrics import results_table
    nan = float("nan")
    table = results_table({"A": {"randomisation": [nan, nan, nan]}, "B": {"randomisation": [0.1, 0.2, 0.3]}},
                          reference="B")
    assert math.isnan(table.mean["A", "randomisation"]) and ("A", "randomisation") not in table.pvalue
