"""The embedded model's recipe: a tiny run builds a loadable pipeline, records its config, and resumes exactly."""

import json

import torch

from pipelines.recipes.minicanvas_sd import RecipeConfig, train
from pipelines.stable_diffusion import generate, load_pipeline

TINY = dict(pool_per_cell=1, vae_steps=2, vae_batch=4, unet_batch=4, unet_warmup=1, checkpoint_every=1)


def test_recipe_builds_a_loadable_pipeline_and_a_killed_run_resumes_to_the_same_weights(tmp_path, capsys):
    straight = train(RecipeConfig(unet_steps=3, **TINY), tmp_path / "w1", tmp_path / "m1")
    recipe = json.loads((tmp_path / "m1" / "recipe.json").read_text())
    assert recipe["config"]["unet_steps"] == 3 and recipe["config"]["seed"] == 0
    assert recipe["recipe"] == "pipelines.recipes.minicanvas_sd"
    assert not list((tmp_path / "m1").rglob("*.bin"))  # safetensors only
    images = generate(load_pipeline(tmp_path / "m1"), ["A Fish image in Neon style."], [0], steps=2)
    assert images.shape == (1, 32, 32, 3)

    train(RecipeConfig(unet_steps=2, **TINY), tmp_path / "w2", tmp_path / "m2")  # "killed" after step 2
    capsys.readouterr()
    resumed = train(RecipeConfig(unet_steps=3, **TINY), tmp_path / "w2", tmp_path / "m2")  # rerun: resumes at 2
    assert "[unet] resumed at step 2" in capsys.readouterr().out
    # bit-identical on purpose: the same run on the same machine, resumed from its own checkpoint
    for module in ("unet", "text_encoder"):
        for pa, pb in zip(getattr(straight, module).parameters(), getattr(resumed, module).parameters()):
            assert torch.equal(pa, pb)
