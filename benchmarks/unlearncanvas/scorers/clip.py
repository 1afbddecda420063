"""CLIP scorers for concept-removal accuracy, CLIP score and the CLIP-feature Frechet distance.

Two sources, one ``ClipScorer`` interface:

* the embedded MiniCanvas CLIP (``pipelines.judges.load_minicanvas_clip``: a tiny ``open_clip.CLIP``
  trained contrastively on MiniCanvas renders and captions by ``pipelines/recipes/judges.py``,
  shipped in ``pipelines/assets/minicanvas_clip`` with its held-out zero-shot accuracy);
* any open_clip architecture and pretrained tag or weights file the user names, loaded with
  ``open_clip.create_model_and_transforms``.

Zero-shot assignment scores an image against the domain's whole prompt grid (``A {object}
image in {style} style.`` for every style and object) and sums the softmax over the other
axis (``pipelines.judges.zero_shot_grid``), so it uses exactly the prompts the answer set was
generated from. Its per-image results feed ``scorers.cells.CellAccuracy`` and ``CellMean``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from erase.concepts import Domain
from pipelines.judges import MINICANVAS_CLIP_DIR, load_minicanvas_clip, zero_shot_grid
from pipelines.weights import CheckpointError


def _openai_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    import open_clip  # heavy; only the CLIP judges need it

    return tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD)


def describe_tower(vision_cfg: dict) -> str:
    """'ResNet (1, 1, 1, 1) width 16' or 'ViT width 96': the image tower of an open_clip config."""
    layers = vision_cfg.get("layers")
    if isinstance(layers, (list, tuple)):
        return f"open_clip ResNet {tuple(layers)} width {vision_cfg['width']}"
    return f"open_clip ViT width {vision_cfg['width']}"


class ClipScorer:
    """Image/text embeddings, zero-shot style and object assignment, and CLIP score.

    ``name`` says which model (and weights) produced a number; it is written into every report.
    """

    def __init__(self, model, name: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                 tokenizer, device: str | torch.device = "cpu", info: dict | None = None):
        self.model = model.eval().to(device)
        self.name, self.image_size, self.tokenizer = name, int(image_size), tokenizer
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.info = info or {}

    @classmethod
    def from_minicanvas(cls, folder: str | Path = MINICANVAS_CLIP_DIR, device: str | torch.device = "cpu"
                        ) -> "ClipScorer":
        """The shipped (or a re-trained) MiniCanvas CLIP; a bad folder raises ``CheckpointError``."""
        import open_clip

        folder = Path(folder)
        model, cfg = load_minicanvas_clip(folder)
        pre = cfg.get("preprocess", {})
        mean, std = _openai_stats()
        return cls(model, f"minicanvas-clip ({folder.name}, {describe_tower(cfg['model_cfg']['vision_cfg'])})",
                   cfg["model_cfg"]["vision_cfg"]["image_size"], pre.get("mean", mean), pre.get("std", std),
                   partial(open_clip.tokenize, context_length=cfg["model_cfg"]["text_cfg"]["context_length"]),
                   device, cfg.get("held_out"))

    @classmethod
    def from_open_clip(cls, arch: str, pretrained: str | None, device: str | torch.device = "cpu") -> "ClipScorer":
        """Any open_clip model: ``pretrained`` is a tag (needs the hub or its cache) or a weights file."""
        import open_clip

        if arch not in open_clip.list_models():
            raise CheckpointError(f"open_clip has no architecture {arch!r} (see open_clip.list_models())")
        try:
            model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device="cpu")
        except Exception as err:  # open_clip raises RuntimeError, hub and safetensors errors alike
            raise CheckpointError(f"cannot load open_clip {arch} with pretrained={pretrained!r}: "
                                  f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean, std = _openai_stats()
        return cls(model, f"open_clip {arch} ({pretrained})", size, pre.get("mean", mean), pre.get("std", std),
                   open_clip.get_tokenizer(arch), device)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Unit-norm image embeddings (N, D) on the CPU for float images (N, 3, H, W) in [0, 1]."""
        out = [F.normalize(self.model.encode_image(self._prepare(images[i:i + batch_size])).float(), dim=-1).cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        out = [F.normalize(self.model.encode_text(self.tokenizer(list(prompts[i:i + batch_size])).to(self.device))
                           .float(), dim=-1).cpu() for i in range(0, len(prompts), batch_size)]
        return torch.cat(out)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else 0

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0

    def grid_texts(self, domain: Domain, photo_phrase: str = "Photo") -> torch.Tensor:
        """Text embeddings of the domain's prompt grid, (theme, object) row-major."""
        return self.encode_texts(domain.grid_prompts(photo_phrase))

    def zero_shot(self, image_emb: torch.Tensor, domain: Domain, photo_phrase: str = "Photo",
                  grid_text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(theme index, object index) per image: softmax over the prompt grid, marginalised per axis."""
        text = self.grid_texts(domain, photo_phrase) if grid_text is None else grid_text
        return zero_shot_grid(image_emb, text, len(domain.themes), len(domain.objects), self.logit_scale)

    @staticmethod
    def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Per-pair CLIP score, 100 * max(cos, 0), as torchmetrics' CLIPScore defines it."""
        return (100 * (image_emb * text_emb).sum(-1)).clamp(min=0)
