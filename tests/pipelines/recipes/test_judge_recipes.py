"""Recipes of the judges: the augmentation that makes the classifier fair to generated images."""

import json

import torch

from benchmarks.unlearncanvas.scorers.clip import ClipScorer
from pipelines.judges import CLIP_CONFIG
from pipelines.recipes.judges import ClipRecipe, augment, hard_negative_batch, train_clip


def test_augment_keeps_range_and_shape():
    x = torch.rand(8, 3, 32, 32)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_hard_negative_batches_pair_each_anchor_with_its_two_near_misses():
    """A third anchors, then the same object in another style, then the same style with another object."""
    n_style, n_obj, per_cell = 11, 10, 3
    by_cell = torch.arange(n_style * n_obj * per_cell).view(n_style * n_obj, per_cell)  # image i is in cell i // 3
    idx = hard_negative_batch(by_cell, n_style, n_obj, 31, torch.Generator().manual_seed(0))
    cell = idx // per_cell
    style, obj = cell // n_obj, cell % n_obj
    anchor, same_object, same_style = style[:10], obj[:10], style[:10]
    assert idx.shape == (31,)
    assert torch.equal(obj[10:20], same_object) and (style[10:20] != anchor).all()
    assert torch.equal(style[20:30], same_style) and (obj[20:30] != obj[:10]).all()


def test_clip_recipe_writes_a_loadable_judge_with_its_recipe(tmp_path):
    """Two steps on two renders per cell: the plumbing (hard negatives, marginal loss, atomic write), not quality."""
    held = train_clip(tmp_path / "clip", ClipRecipe(steps=2, batch=12, per_cell=2, test_per_cell=1), progress=False)
    scorer = ClipScorer.from_minicanvas(tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / CLIP_CONFIG).read_text())
    assert config["recipe"]["steps"] == 2 and config["recipe"]["hard_negatives"] is True
    assert config["held_out"] == held and held["images"] == 110
    assert config["tokenizer"].endswith("context 32)") and "ResNet" in scorer.name
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]  # no temporary folder left
