"""The 8x8 handwritten digits bundled with scikit-learn: data of the digits generators and judge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLASSES = tuple(str(d) for d in range(10))
TEST_SHARE = 0.2  # held-out share of the 1,797 images, split by a fixed permutation (seed 0)


def load_digits_tensors(size: int = 8, split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as float images (N, 1, size, size) in [0, 1] and labels; upsampled bilinearly if size > 8.

    ``split`` is "train", "test" or "all"; the split is a fixed permutation so every tool agrees on it.
    """
    from sklearn.datasets import load_digits  # a declared dependency, heavy to import

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = int(round(TEST_SHARE * len(x)))
    if split == "train":
        order = order[n_test:]
    elif split == "test":
        order = order[:n_test]
    elif split != "all":
        raise ValueError(f"split must be train, test or all, got {split!r}")
    return x[order], y[order]
