"""Recipes of the shipped generators: a tiny run trains, saves and reloads; BatchNorm statistics are exact."""

from __future__ import annotations

import torch

from pipelines.generators import DCGAN, load_generator, seeded_latents
from pipelines.recipes.generators import Recipe, recalibrate_batchnorm, train_generator


def test_tiny_recipe_trains_and_saves(tmp_path):
    for kind in ("vae", "gan"):
        art = train_generator(Recipe(kind, "digits", latent_dim=4, width=8, steps=3, batch=8), tmp_path / kind,
                              log_every=0)
        again = load_generator(tmp_path / kind)
        assert again.config["recipe"]["steps"] == 3 and again.config["data"]["images"] > 1000
        z = seeded_latents(1, 4, 4)
        assert torch.allclose(art.generate(z), again.generate(z))


def test_batchnorm_recalibration_sets_exact_statistics():
    model = DCGAN(4, 1, 16, 8)
    recalibrate_batchnorm(model.generator, 4, torch.Generator().manual_seed(0), batches=3, batch=32)
    bn = model.generator.fc_norm
    assert not model.generator.training and bn.momentum == 0.1
    assert bn.num_batches_tracked.item() == 3 and bn.running_var.mean() != 1
