"""The judges' networks: the MiniCanvas style/object classifier, the digits classifier, the tiny CLIP.

Only networks and their loading live here; the recipes that train them are in
``pipelines/recipes/judges.py`` and the scorers that use them in ``benchmarks/unlearncanvas/scorers``
and ``erase.methods.feature_unlearning``. Label orders are passed in (``erase.concepts`` holds the
vocabularies), so this module imports nothing from the project but ``pipelines``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.weights import CheckpointError, load_model_folder, read_tensors, save_model_folder

ASSETS = Path(__file__).parent / "assets"
MINICANVAS_CLASSIFIER_DIR = ASSETS / "minicanvas_classifier"
DIGITS_CLASSIFIER_DIR = ASSETS / "digits_classifier"
MINICANVAS_CLIP_DIR = ASSETS / "minicanvas_clip"
CLIP_WEIGHTS = "open_clip_model.safetensors"
CLIP_CONFIG = "open_clip_config.json"


# --------------------------------------------------------------------------- MiniCanvas classifier
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MiniCanvasClassifier(nn.Module):
    """One small CNN with a style head and an object head; ``predict`` gives (theme ids, object ids)."""

    def __init__(self, themes: Sequence[str], objects: Sequence[str], image_size: int = 32, width: int = 32):
        super().__init__()
        self.themes, self.objects, self.image_size, self.width = tuple(themes), tuple(objects), image_size, width
        self.features = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2),
                                      _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.style_head = nn.Linear(4 * width, len(self.themes))
        self.object_head = nn.Linear(4 * width, len(self.objects))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], resized (antialiased bilinear) to the training size, scaled to [-1, 1]."""
        images = images.float()
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of both heads for images in [0, 1]."""
        h = self.features(self.prepare(images))
        return self.style_head(h), self.object_head(h)

    def _on_own_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(next(self.parameters()).device)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' probabilities on the images' device; each batch runs where the classifier is (the
        evaluation hands it images read from disk on the CPU whichever device it runs on)."""
        self.eval()
        styles, objects = [], []
        for i in range(0, len(images), batch_size):
            s, o = self(self._on_own_device(images[i:i + batch_size]))
            styles.append(s.softmax(1).to(images.device))
            objects.append(o.softmax(1).to(images.device))
        return torch.cat(styles), torch.cat(objects)

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        styles, objects = self.predict_proba(images, batch_size)
        return styles.argmax(1), objects.argmax(1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Pooled 128-d features (the feature space of FD_clf)."""
        self.eval()
        return torch.cat([self.features(self.prepare(self._on_own_device(images[i:i + batch_size]))).to(images.device)
                          for i in range(0, len(images), batch_size)])

    def save_pretrained(self, folder: str | Path, extra: dict | None = None) -> None:
        save_model_folder(self, folder, {"themes": list(self.themes), "objects": list(self.objects),
                                         "image_size": self.image_size, "width": self.width, **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | Path = MINICANVAS_CLASSIFIER_DIR) -> "MiniCanvasClassifier":
        return load_model_folder(folder, lambda c: cls(c["themes"], c["objects"], c["image_size"], c["width"]),
                                 "MiniCanvas classifier")


# --------------------------------------------------------------------------- digits classifier
class DigitsClassifier(nn.Module):
    """MLP 64-128-64-10 on 8x8 digits (shared/reference/gan_vae.md section 5); inputs area-resized to 8x8."""

    classes = tuple(str(d) for d in range(10))

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
    def from_pretrained(cls, folder: str | Path = DIGITS_CLASSIFIER_DIR) -> "DigitsClassifier":
        return load_model_folder(folder, lambda cfg: cls(cfg["hidden"]), "digits classifier")


# --------------------------------------------------------------------------- tiny CLIP
def tiny_clip_config() -> dict:
    """open_clip model config of the MiniCanvas CLIP (4.65 M parameters, 18.6 MB in float32).

    The image tower is open_clip's ModifiedResNet (layers given as a list), not a ViT: at 32 px a
    4-layer ViT with 4 px patches reached 69 % held-out zero-shot object accuracy after 1,000 steps,
    this CNN 100 % after 1,500 and trains six times faster. Captions are short, so the text context is
    32 tokens (``ClipScorer`` tokenizes with the config's length).
    """
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    }


def build_clip(model_cfg: dict):
    """An ``open_clip.CLIP`` from a config dict in open_clip's own model-config format."""
    import open_clip  # heavy; only the CLIP judges need it
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    return open_clip.CLIP(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]),
                          CLIPTextCfg(**model_cfg["text_cfg"]))


def load_minicanvas_clip(folder: str | Path = MINICANVAS_CLIP_DIR):
    """(open_clip model, config dict) of a MiniCanvas CLIP folder; a bad folder raises ``CheckpointError``."""
    folder = Path(folder)
    if not (folder / CLIP_CONFIG).is_file() or not (folder / CLIP_WEIGHTS).is_file():
        raise CheckpointError(f"no MiniCanvas CLIP in {folder} (needs {CLIP_CONFIG} and {CLIP_WEIGHTS})")
    try:
        cfg = json.loads((folder / CLIP_CONFIG).read_text())
        model = build_clip(cfg["model_cfg"])
        model.load_state_dict(read_tensors(folder / CLIP_WEIGHTS), strict=True)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt MiniCanvas CLIP in {folder}: {str(err).splitlines()[0]}") from err
    return model.eval(), cfg


def zero_shot_grid(image_emb: torch.Tensor, grid_text_emb: torch.Tensor, rows: int, cols: int,
                   logit_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) index per image: softmax over a rows x cols prompt grid, marginalised per axis."""
    p = (logit_scale * image_emb @ grid_text_emb.T).softmax(-1).view(-1, rows, cols)
    return p.sum(2).argmax(1), p.sum(1).argmax(1)
