"""The feature-unlearning benchmark's generator-quality section on a tiny untrained MiniCanvas GAN."""

from __future__ import annotations

import pytest

from benchmarks.feature_unlearning import generator_quality
from erase.concepts import MINICANVAS
from pipelines.generators import DCGAN, save_generator


def test_generator_quality_reports_every_class_and_a_distance(tmp_path):
    model = DCGAN(4, 3, 32, 8, spectral_norm=True).eval()
    folder = save_generator(tmp_path / "gan", model, {"kind": "gan", "dataset": "minicanvas", "latent_dim": 4,
                                                      "channels": 3, "image_size": 32, "width": 8,
                                                      "spectral_norm": True})
    q = generator_quality(str(folder), count=110)
    assert set(q["style_pct"]) == set(MINICANVAS.themes) and set(q["object_pct"]) == set(MINICANVAS.objects)
    for head in ("style_pct", "object_pct"):  # shares of 110 samples in percent, rounded to 0.01
        assert sum(q[head].values()) == pytest.approx(100, abs=0.1)
    assert 0 <= q["confident_style_pct"] <= 100 and q["min_style_pct"] == min(q["style_pct"].values())
    assert q["real_renders"] == len(MINICANVAS.themes) * len(MINICANVAS.objects) and q["fd_clf_vs_real"] > 0
