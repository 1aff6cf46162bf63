"""The sample-complexity bounds: hand-computed values, inversion, and validity against exact tails."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranem.bounds import hoeffding_bound, n_needed, population_stats, serfling_bound, variance_bound


def test_serfling_hand_computed():
    # t = 0.2, n = 50, d = 100: f* = 49/100, 1 - f* = 0.51, 2 n t^2 = 4.
    assert serfling_bound(0.2, 50, 100) == pytest.approx(2 * math.exp(-4 / 0.51))
    assert serfling_bound(0.2, 50, 100, value_range=2.0) == pytest.approx(2 * math.exp(-4 / (0.51 * 4)))
    # The paper's printed form has (b - a), not (b - a)^2: it differs as soon as b - a != 1.
    assert serfling_bound(0.2, 50, 100, value_range=2.0, paper_form=True) == pytest.approx(
        2 * math.exp(-4 / (0.51 * 2)))
    assert serfling_bound(0.2, 50, 100, paper_form=True) == serfling_bound(0.2, 50, 100)
    assert serfling_bound(0.01, 1, 100) == 1.0  # clipped


def test_variance_and_hoeffding_hand_computed():
    # t = 0.1, n = 10, d = 101, s^2 = 0.04: f = 9/100, (1 - f) s^2 / (n t^2) = 0.91 * 0.04 / 0.1.
    assert variance_bound(0.1, 10, 101, 0.04) == pytest.approx(0.364)
    assert variance_bound(0.1, 10, 101, 0.04, paper_form=True) == pytest.approx(0.728)
    assert variance_bound(0.1, 101, 101, 0.04) == 0.0  # the whole population: no error
    assert variance_bound(0.1, 1, 1, 0.0) == 0.0
    assert hoeffding_bound(0.1, 100) == pytest.approx(2 * math.exp(-2))
    assert hoeffding_bound(0.1, 100, value_range=0.5) == pytest.approx(2 * math.exp(-8))


def test_n_needed_hand_computed():
    # ln(2 / 0.05) = ln 40 = 3.68888; Hoeffding: 3.68888 / (2 * 0.01) = 184.4 -> 185.
    assert n_needed(0.1, 0.05, bound="hoeffding") == 185
    # Serfling, d = 100: 3.68888 * 101 / (2 * 0.01 * 100 + 3.68888) = 65.49 -> 66.
    assert n_needed(0.1, 0.05, d=100) == 66
    assert serfling_bound(0.1, 66, 100) <= 0.05 < serfling_bound(0.1, 65, 100)
    # Variance, d = 101, s^2 = 0.04: 101 * 0.04 / (0.05 * 0.01 * 100 + 0.04) = 4.04 / 0.09 = 44.9 -> 45.
    assert n_needed(0.1, 0.05, d=101, bound="variance", variance=0.04) == 45
    # Hoeffding may ask for more than the population; the finite-population bounds never do.
    assert n_needed(0.01, 0.01, bound="hoeffding") > 1000
    assert n_needed(0.01, 0.01, d=1000) <= 1000
    np.testing.assert_array_equal(n_needed(np.array([0.1, 0.2]), 0.05, bound="hoeffding"), [185, 47])


@settings(max_examples=60, deadline=None)
@given(t=st.floats(0.01, 0.5), delta=st.floats(0.001, 0.5), d=st.integers(2, 5000),
       r=st.floats(0.1, 3.0), s2=st.floats(1e-4, 0.3), paper=st.booleans())
def test_n_needed_is_the_smallest_sufficient_n(t, delta, d, r, s2, paper):
    cases = [
        (n_needed(t, delta, d=d, value_range=r, paper_form=paper),
         lambda n: serfling_bound(t, n, d, r, paper_form=paper)),
        (n_needed(t, delta, d=d, bound="variance", variance=s2, paper_form=paper),
         lambda n: variance_bound(t, n, d, s2, paper_form=paper)),
    ]
    for n, bound in cases:
        assert 1 <= n <= d
        if n < d:
            assert bound(n) <= delta * (1 + 1e-9)
        if n > 1:
            assert bound(n - 1) > delta * (1 - 1e-9)
    n = n_needed(t, delta, value_range=r, bound="hoeffding")
    assert hoeffding_bound(t, n, r) <= delta * (1 + 1e-9)
    assert n == 1 or hoeffding_bound(t, n - 1, r) > delta * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(t=st.floats(0.001, 1.0), n=st.integers(1, 200), extra=st.integers(0, 200), r=st.floats(0.01, 5))
def test_serfling_never_looser_than_hoeffding(t, n, extra, r):
    d = n + extra
    assert serfling_bound(t, n, d, r) <= hoeffding_bound(t, n, r) + 1e-15
    if n == 1:
        assert serfling_bound(t, n, d, r) == pytest.approx(hoeffding_bound(t, n, r))


def exact_tail(population, n, t):
    """P(|mean of n drawn without replacement - mu| > t), by enumerating every subset."""
    mu = np.mean(population)
    means = np.array([np.mean(c) for c in itertools.combinations(population, n)])
    return np.mean(np.abs(means - mu) > t)


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_bounds_hold_on_exact_tails(scale):
    rng = np.random.default_rng(0)
    population = scale * np.concatenate([rng.uniform(0, 0.2, 6), rng.uniform(0.8, 1.0, 6)])
    d = population.size
    r, s2 = population_stats(population)
    for n in (1, 2, 4, 8, 12):
        for t in scale * np.array([0.05, 0.1, 0.2, 0.3, 0.45]):
            p = exact_tail(population, n, t)
            assert p <= serfling_bound(t, n, d, r) + 1e-12
            assert p <= variance_bound(t, n, d, s2) + 1e-12
            assert p <= hoeffding_bound(t, n, r) + 1e-12


def test_paper_form_fails_when_the_range_exceeds_one():
    # Scores in {0, 10}: every single draw is 5 away from the mean, so P(|error| > 4) = 1 for n = 1.
    population = np.array([0.0] * 5 + [10.0] * 5)
    assert exact_tail(population, 1, 4.0) == 1.0
    assert serfling_bound(4.0, 1, 10, value_range=10.0) == 1.0
    assert serfling_bound(4.0, 1, 10, value_range=10.0, paper_form=True) < 0.1  # a false guarantee


def test_population_stats():
    r, s2 = population_stats([0.0, 1.0, 2.0, 3.0])
    assert r == 3.0 and s2 == pytest.approx(1.25)
    rs, s2s = population_stats(np.array([[0.0, 2.0], [1.0, 1.0]]))
    np.testing.assert_allclose(rs, [2.0, 0.0])
    np.testing.assert_allclose(s2s, [1.0, 0.0])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="t must be > 0"):
        serfling_bound(0.0, 5, 10)
    with pytest.raises(ValueError, match="n must be at most d"):
        serfling_bound(0.1, 11, 10)
    with pytest.raises(ValueError, match="n must be a whole number"):
        variance_bound(0.1, 2.5, 10, 0.1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        hoeffding_bound(0.1, 0)
    with pytest.raises(ValueError, match="value_range must be > 0"):
        hoeffding_bound(0.1, 5, value_range=0)
    with pytest.raises(ValueError, match="variance must be >= 0"):
        variance_bound(0.1, 5, 10, -1.0)
    with pytest.raises(ValueError, match="t must be finite"):
        serfling_bound(float("nan"), 5, 10)
    with pytest.raises(ValueError, match=r"delta must lie in \(0, 1\)"):
        n_needed(0.1, 1.5, d=10)
    with pytest.raises(ValueError, match="bound must be one of"):
        n_needed(0.1, 0.05, d=10, bound="bernstein")
    with pytest.raises(ValueError, match="needs the population size d"):
        n_needed(0.1, 0.05)
    with pytest.raises(ValueError, match="needs the population variance"):
        n_needed(0.1, 0.05, d=10, bound="variance")
    with pytest.raises(TypeError, match="t must be a number"):
        serfling_bound("big", 5, 10)
