"""Style and object classifiers: the judges behind UA, IRA and CRA.

Both worlds expose one interface, ``StyleObjectClassifier.predict(images) -> (theme_ids, object_ids)``
on float images in [0, 1], so the metrics never ask which world they are in:

* ``pipelines.judges.MiniCanvasClassifier``: the embedded world's small two-head CNN (its recipe is
  ``pipelines/recipes/judges.py``), loaded with ``MiniCanvasClassifier.from_pretrained``;
* ``UnlearnCanvasClassifier``: the two released UnlearnCanvas ViT-L/16 checkpoints
  (``style50.pth``: 51 themes, ``style50_cls.pth``: 20 objects), built with timm without any
  pretrained download and read with ``torch.load(weights_only=True)``.

Predictions feed ``scorers.cells.CellAccuracy``, which keeps the counts per (theme, object) cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from erase.concepts import UNLEARNCANVAS
from pipelines.weights import CheckpointError


class StyleObjectClassifier(Protocol):
    themes: tuple[str, ...]
    objects: tuple[str, ...]

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted theme and object indices for float images (N, 3, H, W) in [0, 1]."""

    def predict_proba(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Theme and object probabilities (N, themes), (N, objects); the playground shows them."""


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """The official ``accuracy.py`` input: ``transforms.Resize((224, 224))`` on a PIL image (bilinear with
    antialiasing when shrinking), then normalise with mean = std = 0.5. ``images``: (N, 3, H, W) in [0, 1].

    torch's antialiased bilinear kernel is PIL's; without antialiasing a 512 -> 224 resize differs from
    the official input by 1.5-5.3 grey levels on average (issue 17), with it by less than one.
    """
    x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x - 0.5) / 0.5


class UnlearnCanvasClassifier:
    """The released UnlearnCanvas ViT-L/16 judges: resize 224, normalise with mean = std = 0.5."""

    def __init__(self, style_checkpoint: str | Path, object_checkpoint: str | Path,
                 arch: str = "vit_large_patch16_224", device: str | torch.device = "cpu"):
        self.themes, self.objects, self.device = UNLEARNCANVAS.themes, UNLEARNCANVAS.objects, torch.device(device)
        self.style_model = self._load(style_checkpoint, arch, len(self.themes))
        self.object_model = self._load(object_checkpoint, arch, len(self.objects))

    def _load(self, path: str | Path, arch: str, classes: int) -> nn.Module:
        import timm  # heavy; only the real-world judges need it

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"classifier checkpoint {path} does not exist")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a corrupt or pickled-object file
            raise CheckpointError(f"cannot read classifier checkpoint {path}: {str(err).splitlines()[0]}") from err
        state = blob.get("model_state_dict", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds no state dict (expected key 'model_state_dict')")
        model = timm.create_model(arch, pretrained=False, num_classes=classes)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            lines = str(err).splitlines()
            raise CheckpointError(f"{path} does not fit {arch} with {classes} classes: "
                                  f"{lines[1].strip() if len(lines) > 1 else err}") from err
        return model.eval().to(self.device)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities of both heads, (N, themes) and (N, objects), on the CPU."""
        styles, objects = [], []
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i:i + batch_size].to(self.device))
            styles.append(self.style_model(x).float().softmax(1).cpu())
            objects.append(self.object_model(x).float().softmax(1).cpu())
        return torch.cat(styles), torch.cat(objects)

    def predict(self, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        styles, objects = self.predict_proba(images, batch_size)
        return styles.argmax(1), objects.argmax(1)
