"""scikit-learn's bundled 8x8 digits: real data that works offline, and the classifier that judges it.

The digits play two parts in feature unlearning (README.md, Feature unlearning): the training set of
the digits generators, and, through ``DigitsClassifier``, the stand-in user who marks which
generated samples show a digit and whose penultimate activations define the Frechet distance
FD_clf. The classifier follows the reference prototype (shared/reference/gan_vae.md section 5):
an MLP 64-128-64-10 trained on 8x8 images with light input noise.

    python -m benchmarks.digits            # retrain the shipped classifier (about a CPU minute)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from erase.checkpoint import CheckpointError, load_model_folder, save_model_folder

SHIPPED_DIR = Path(__file__).parent / "assets" / "digits_classifier"
CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
TEST_SHARE = 0.2  # held-out share of the 1,797 images, split by a fixed permutation (seed 0)


def load_digits_tensors(size: int = 8, split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as float images (N, 1, size, size) in [0, 1] and labels; upsampled bilinearly if size > 8.

    ``split`` is "train", "test" or "all"; the split is a fixed permutation so every tool agrees on it.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a declared dependency
        raise CheckpointError("the digits data needs scikit-learn (pip install scikit-learn)") from err
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


class DigitsClassifier(nn.Module):
    """MLP 64-128-64-10 on 8x8 digits; any input size is area-resized to 8x8 first."""

    classes = CLASSES

    def __init__(self, hidden: Sequence[int] = (128, 64)):
        super().__init__()
        self.hidden = tuple(hidden)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden[0]), nn.ReLU(),
                                  nn.Linear(hidden[0], hidden[1]), nn.ReLU())
        self.head = nn.Linear(hidden[1], 10)

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        if images.shape[-2:] != (8, 8):
            images = F.adaptive_avg_pool2d(images, (8, 8))
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate activations: the feature space of FD_clf."""
        return self.body(self._prepare(images.float()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        self.eval()
        return torch.cat([self(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        self.eval()
        return torch.cat([self.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def save_pretrained(self, folder: str | Path, extra: dict | None = None) -> None:
        save_model_folder(self, folder, {"hidden": list(self.hidden), **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | Path = SHIPPED_DIR) -> "DigitsClassifier":
        return load_model_folder(folder, lambda cfg: cls(cfg["hidden"]), "digits classifier")


def train_classifier(out: str | Path, epochs: int = 60, batch: int = 64, lr: float = 2e-3, noise: float = 0.1,
                     seed: int = 0) -> float:
    """Train on the train split with Gaussian input noise (generated digits are never clean); return test accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_digits_tensors(8, "train")
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            xb = (x[idx] + noise * torch.randn(x[idx].shape, generator=gen)).clamp(0, 1)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    tx, ty = load_digits_tensors(8, "test")
    acc = (model.predict(tx) == ty).float().mean().item()
    model.save_pretrained(out, {"recipe": {"epochs": epochs, "batch": batch, "lr": lr, "input_noise": noise,
                                           "seed": seed, "optimizer": "Adam, weight decay 1e-4",
                                           "train_seconds": round(time.time() - t0, 1)},
                                "data": {"source": "sklearn.datasets.load_digits", "split": "permutation seed 0, "
                                         f"{TEST_SHARE:.0%} held out", "test_images": len(tx)},
                                "held_out_accuracy": round(acc, 4),
                                "source": "architecture after shared/reference/gan_vae.md section 5"})
    return acc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the digits classifier (stand-in user and FD_clf features).")
    parser.add_argument("--out", default=str(SHIPPED_DIR))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    acc = train_classifier(args.out, args.epochs, seed=args.seed)
    print(f"held-out digits accuracy: {acc:.4f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
