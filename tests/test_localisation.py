"""Ground-truth checks: pointing game, mass in mask, precision at mask size, against slow loops."""
from __future__ import annotations

import pytest
import torch

from ranem.metrics import mass_in_mask, pointing_game, precision_at_mask


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    attribution = torch.randn(5, 6, 7, generator=g).round()  # rounding: ties
    mask = torch.rand(5, 6, 7, generator=g) < 0.3
    mask[:, 0, 0] = True
    return attribution, mask


def test_against_slow_references(case):
    attribution, mask = case
    for i in range(5):
        a, m = attribution[i].flatten().tolist(), mask[i].flatten().tolist()
        top = max(range(len(a)), key=lambda j: (a[j], -j))  # first maximal pixel in row-major order
        assert pointing_game(attribution, mask)[i] == float(m[top])
        lo, hi = min(a), max(a)
        norm = [(v - lo) / (hi - lo) for v in a]
        assert mass_in_mask(attribution, mask)[i] == pytest.approx(sum(n for n, k in zip(norm, m) if k) / sum(norm))
        order = sorted(range(len(a)), key=lambda j: (-a[j], j))
        size = sum(m)
        assert precision_at_mask(attribution, mask)[i] == pytest.approx(sum(m[j] for j in order[:size]) / size)


def test_perfect_and_constant_maps(case):
    _, mask = case
    perfect = mask.float()
    assert torch.equal(pointing_game(perfect, mask), torch.ones(5))
    assert torch.equal(precision_at_mask(perfect, mask), torch.ones(5))
    torch.testing.assert_close(mass_in_mask(perfect, mask), torch.ones(5))
    constant = torch.zeros(5, 6, 7)
    torch.testing.assert_close(mass_in_mask(constant, mask), mask.float().mean(dim=(1, 2)))


def test_bad_inputs(case):
    attribution, mask = case
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(attribution[:, :3], mask)
    with pytest.raises(ValueError, match="at least one pixel"):
        mass_in_mask(attribution, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="finite"):
        precision_at_mask(attribution.clone().fill_(float("nan")), mask)
    with pytest.raises(TypeError, match="mask"):
        pointing_game(attribution, mask.numpy())
