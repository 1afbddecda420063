import json

import torch

from pipelines.minicanvas_model import RecipeConfig, train
from pipelines.stable_diffusion import generate, load_pipeline

TINY = dict(pool_per_cell=1, vae_steps=2, vae_batch=4, unet_batch=4, unet_warmup=1, checkpoint_every=1)


def test_recipe_builds_a_loadable_pipeline_and_records_its_config(tmp_path):
    train(RecipeConfig(unet_steps=2, **TINY), tmp_path / "work", tmp_path / "model")
    recipe = json.loads((tmp_path / "model" / "recipe.json").read_text())
    assert recipe["config"]["unet_steps"] == 2 and recipe["config"]["seed"] == 0
    assert not list((tmp_path / "model").rglob("*.bin"))  # safetensors only
    images = generate(load_pipeline(tmp_path / "model"), ["A Fish image in Neon style."], [0], steps=2)
    assert images.shape == (1, 32, 32, 3)


def test_killed_and_resumed_recipe_ends_with_the_same_weights(tmp_path, capsys):
    train(RecipeConfig(unet_steps=3, **TINY), tmp_path / "w1", tmp_path / "m1")
    train(RecipeConfig(unet_steps=2, **TINY), tmp_path / "w2", tmp_path / "m2")  # "killed" after step 2
    capsys.readouterr()
    train(RecipeConfig(unet_steps=3, **TINY), tmp_path / "w2", tmp_path / "m2")  # rerun: resumes at 2
    assert "[unet] resumed at step 2" in capsys.readouterr().out
    a, b = load_pipeline(tmp_path / "m1"), load_pipeline(tmp_path / "m2")
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.text_encoder.parameters(), b.text_encoder.parameters()):
        assert torch.equal(pa, pb)
