"""Recipes of the judges: the augmentation that makes the classifier fair to generated images."""

import torch

from pipelines.recipes.judges import augment


def test_augment_keeps_range_and_shape():
    x = torch.rand(8, 3, 32, 32)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
