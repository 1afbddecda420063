"""The feature test of feature unlearning: direction, thresholds, AUC, and where flagged latents land."""

from __future__ import annotations

import pytest
import torch

from erase.methods.latent_direction import Direction, FeedbackError, auc, fit_direction


def test_shift_lands_on_threshold_along_the_direction():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=gen)
    d = fit_direction(z, z[:, 2] + 0.3 * z[:, 0] > 1.0)
    zh = d.shift(z)
    # float32 projections of unit-scale latents: 1e-5 is ~100 ulps
    assert torch.allclose(d.project(zh), torch.full((400,), d.threshold), atol=1e-5)
    delta = zh - z
    assert torch.allclose(delta - (delta @ d.u)[:, None] * d.u, torch.zeros_like(z), atol=1e-5)
    raw = d.shift(z, "raw")  # the paper's unnormalised z_e over/undershoots by ||z_e||
    assert torch.allclose(d.project(raw) - d.threshold, (1 - d.norm) * (d.project(z) - d.threshold), atol=1e-4)


def test_margin_moves_the_landing_point_not_the_flags():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(500, 6, generator=gen)
    labels = z[:, 1] > 0.7
    plain, deeper = fit_direction(z, labels), fit_direction(z, labels, margin=0.5)
    assert torch.equal(plain.flagged(z), deeper.flagged(z))  # same threshold, same comparison
    spread = float((z.double() @ plain.u.double()).std())
    assert deeper.spread == pytest.approx(spread, rel=1e-6)
    assert deeper.landing == pytest.approx(plain.threshold - 0.5 * spread, rel=1e-6)
    assert torch.allclose(deeper.project(deeper.shift(z)), torch.full((500,), deeper.landing), atol=1e-5)
    again = Direction.from_json(deeper.to_json())  # what an artifact records is enough to rebuild it
    assert again.landing == pytest.approx(deeper.landing, abs=1e-5) and again.margin == 0.5


def test_an_old_record_without_margin_lands_on_the_threshold():
    record = fit_direction(torch.randn(50, 3), torch.arange(50) < 10).to_json()
    for key in ("spread", "margin", "landing"):
        record.pop(key)
    d = Direction.from_json(record)
    assert d.margin == 0.0 and d.landing == d.threshold


def test_thresholds_midpoint_and_pooled():
    z = torch.tensor([[3.0], [1.0], [0.0], [0.0], [-1.0], [1.0]])
    y = torch.tensor([True, True, False, False, False, False])
    assert fit_direction(z, y, "midpoint").threshold == pytest.approx((2.0 + 0.0) / 2)
    assert fit_direction(z, y, "pooled").threshold == pytest.approx(4.0 / 6)
    with pytest.raises(Exception, match="threshold"):
        fit_direction(z, y, "median")


def test_auc_matches_definition():
    s = torch.tensor([0.9, 0.8, 0.1, 0.8, 0.2])
    y = torch.tensor([True, True, False, False, False])
    assert auc(s, y) == pytest.approx((3 + 2.5) / 6)


@pytest.mark.parametrize("labels", [[False] * 5, [True] * 5])
def test_direction_needs_positives_and_negatives(labels):
    with pytest.raises(FeedbackError, match="at least one of each"):
        fit_direction(torch.randn(5, 3), torch.tensor(labels))
