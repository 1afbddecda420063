"""Frechet distances between an answer set and the protocol's reference set, through torchmetrics.

Two feature spaces, chosen explicitly and always named in the report:

* ``InceptionFeatures``: torchmetrics' FID Inception-v3 (2048-d pool features), built from the
  weights file the user gives (``feature_extractor_weights_path``); needs ``torch-fidelity``.
* ``ClipFeatures``: the unit-norm image embeddings of a ``ClipScorer`` (the embedded MiniCanvas
  CLIP offline, or any open_clip model). Its numbers are a Frechet *CLIP* distance and are not
  comparable with published Inception FIDs; the report says so.

Features are extracted once per image; the distance for each erased target is then computed
on the subset that excludes the target's cells, by feeding the stored features through
torchmetrics' ``FrechetInceptionDistance`` with an identity feature module. Nothing falls back
silently: missing weights or a missing package raise ``FIDError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class FIDError(ValueError):
    """The requested FID features cannot be built; one line for the user."""


class _StoredFeatures(nn.Module):
    """Identity 'feature extractor' so torchmetrics accumulates features computed beforehand."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D), via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = torch.as_tensor(np.asarray(real), dtype=torch.float64), torch.as_tensor(np.asarray(fake),
                                                                                         dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise FIDError(f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise FIDError(f"a Frechet distance needs at least 2 images per set, got {len(real)} reference "
                       f"and {len(fake)} generated")
    metric = FrechetInceptionDistance(feature=_StoredFeatures(real.shape[1]), reset_real_features=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


class ClipFeatures:
    """Unit-norm CLIP image embeddings as FID features."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.name = f"Frechet CLIP distance on {scorer.name} image embeddings ({scorer.embed_dim}-d, unit norm)"
        self.kind = "clip"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features (N, D) for float images (N, 3, H, W) in [0, 1]."""
        return self.scorer.encode_images(images).double()


class InceptionFeatures:
    """torchmetrics' FID Inception-v3 2048-d pool features from a local weights file."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        weights = Path(weights)
        if not weights.is_file():
            raise FIDError(f"Inception weights file {weights} does not exist")
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance

            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
        except ModuleNotFoundError as err:
            raise FIDError("the Inception FID needs torch-fidelity (pip install torch-fidelity); "
                           "or leave out --inception-weights to use the CLIP Frechet distance") from err
        except Exception as err:  # a wrong file: torch / torch-fidelity raise several types
            raise FIDError(f"cannot load Inception weights {weights}: {str(err).splitlines()[0]}") from err
        self.model = metric.inception.eval().to(device)
        self.device = torch.device(device)
        self.name = f"FID, torchmetrics Inception-v3 pool3 2048-d ({weights.name})"
        self.kind = "inception"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).to(self.device)
        return self.model(x).double().cpu()
