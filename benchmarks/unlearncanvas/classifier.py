"""Style and object classifiers: the judges behind UA, IRA and CRA.

Both worlds expose one interface, ``StyleObjectClassifier.predict(images) -> (theme_ids, object_ids)``
on float images in [0, 1], so the metrics never ask which world they are in:

* ``MiniCanvasClassifier``: one small CNN with a style head and an object head, trained by the
  recipe below on MiniCanvas renders with augmentation (blur, noise, colour and position
  jitter, down-up sampling) so that it judges generated images, which are never as clean as
  renders, fairly.
* ``UnlearnCanvasClassifier``: the two released UnlearnCanvas ViT-L/16 checkpoints
  (``style50.pth``: 51 themes, ``style50_cls.pth``: 20 objects), built with timm without any
  pretrained download and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmarks.unlearncanvas import minicanvas
from erase.checkpoint import CheckpointError, load_model_folder, save_model_folder

SHIPPED_DIR = Path(__file__).parent / "assets" / "minicanvas_classifier"


class StyleObjectClassifier(Protocol):
    themes: tuple[str, ...]
    objects: tuple[str, ...]

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted theme and object indices for float images (N, 3, H, W) in [0, 1]."""


# --------------------------------------------------------------------------- MiniCanvas
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MiniCanvasClassifier(nn.Module):
    def __init__(self, themes: Sequence[str] = minicanvas.THEMES, objects: Sequence[str] = minicanvas.OBJECTS,
                 image_size: int = minicanvas.DEFAULT_SIZE, width: int = 32):
        super().__init__()
        self.themes, self.objects, self.image_size, self.width = tuple(themes), tuple(objects), image_size, width
        self.features = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2),
                                      _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.style_head = nn.Linear(4 * width, len(self.themes))
        self.object_head = nn.Linear(4 * width, len(self.objects))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of both heads for images in [0, 1]; resized to the training size if needed."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        h = self.features(images * 2 - 1)
        return self.style_head(h), self.object_head(h)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        self.eval()
        styles, objects = [], []
        for i in range(0, len(images), batch_size):
            s, o = self(images[i:i + batch_size].float())
            styles.append(s.argmax(1))
            objects.append(o.argmax(1))
        return torch.cat(styles), torch.cat(objects)

    def save_pretrained(self, folder: str | Path, extra: dict | None = None) -> None:
        save_model_folder(self, folder, {"themes": list(self.themes), "objects": list(self.objects),
                                         "image_size": self.image_size, "width": self.width, **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | Path = SHIPPED_DIR) -> "MiniCanvasClassifier":
        return load_model_folder(folder, lambda c: cls(c["themes"], c["objects"], c["image_size"], c["width"]),
                                 "MiniCanvas classifier")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Degrade clean renders the way a small diffusion model's samples are degraded."""
    n, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    blur = u(n) < 0.5
    if blur.any():
        sigma = float(0.4 + 0.6 * u(1))
        k = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-k ** 2 / (2 * sigma ** 2))
        k = (k / k.sum()).view(1, 1, 1, 5)
        xb = x[blur].reshape(-1, 1, h, w)
        xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), k)
        xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3))
        x = x.clone()
        x[blur] = xb.reshape(-1, 3, h, w)
    down = u(n) < 0.3
    if down.any():
        small = F.interpolate(x[down], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        x[down] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    contrast = 0.85 + 0.3 * u(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + 0.08 * (u(n, 3, 1, 1) - 0.5)
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * u(n, 1, 1, 1)
    return x.clamp(0, 1)


def render_tensors(per_cell: int, seed: int, size: int = minicanvas.DEFAULT_SIZE):
    images, themes, objects = minicanvas.render_arrays(minicanvas.grid_samples(per_cell), seed, size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(themes), torch.from_numpy(objects)


def accuracy(model: StyleObjectClassifier, images: torch.Tensor, themes: torch.Tensor,
             objects: torch.Tensor) -> tuple[float, float]:
    s, o = model.predict(images)
    return (s == themes).float().mean().item(), (o == objects).float().mean().item()


def train_classifier(out: Path, per_cell: int = 100, epochs: int = 8, batch: int = 128, lr: float = 2e-3,
                     seed: int = 0, data_seed: int = 2000, test_seed: int = 9000, test_per_cell: int = 20
                     ) -> tuple[float, float]:
    """Train on fresh renders (``data_seed``), report accuracy on held-out renders (``test_seed``)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, ys, yo = render_tensors(per_cell, data_seed)
    model = MiniCanvasClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    model.train()
    bar = tqdm(range(steps), desc="classifier", mininterval=5, file=sys.stdout)
    for _ in bar:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        ls, lo = model(augment(x[idx], gen))
        loss = F.cross_entropy(ls, ys[idx]) + F.cross_entropy(lo, yo[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    tx, tys, tyo = render_tensors(test_per_cell, test_seed)
    style_acc, object_acc = accuracy(model.eval(), tx, tys, tyo)
    model.save_pretrained(out, {"recipe": {"per_cell": per_cell, "epochs": epochs, "batch": batch, "lr": lr,
                                           "seed": seed, "data_seed": data_seed, "train_seconds": round(time.time() - t0, 1)},
                                "held_out": {"seed": test_seed, "per_cell": test_per_cell,
                                             "style_accuracy": style_acc, "object_accuracy": object_acc}})
    return style_acc, object_acc


# --------------------------------------------------------------------------- UnlearnCanvas
class UnlearnCanvasClassifier:
    """The released UnlearnCanvas ViT-L/16 judges: resize 224, normalise with mean = std = 0.5."""

    def __init__(self, style_checkpoint: str | Path, object_checkpoint: str | Path,
                 arch: str = "vit_large_patch16_224", device: str | torch.device = "cpu"):
        from benchmarks.unlearncanvas.constants import OBJECTS, THEMES

        self.themes, self.objects, self.device = tuple(THEMES), tuple(OBJECTS), torch.device(device)
        self.style_model = self._load(style_checkpoint, arch, len(self.themes))
        self.object_model = self._load(object_checkpoint, arch, len(self.objects))

    def _load(self, path: str | Path, arch: str, classes: int) -> nn.Module:
        import timm

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
            raise CheckpointError(f"{path} does not fit {arch} with {classes} classes: "
                                  f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}") from err
        return model.eval().to(self.device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        styles, objects = [], []
        for i in range(0, len(images), batch_size):
            x = F.interpolate(images[i:i + batch_size].float().to(self.device), size=(224, 224), mode="bilinear",
                              align_corners=False)
            x = (x - 0.5) / 0.5
            styles.append(self.style_model(x).argmax(1).cpu())
            objects.append(self.object_model(x).argmax(1).cpu())
        return torch.cat(styles), torch.cat(objects)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the MiniCanvas style/object classifier.")
    parser.add_argument("--out", default=str(SHIPPED_DIR))
    parser.add_argument("--per-cell", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    style_acc, object_acc = train_classifier(Path(args.out), args.per_cell, args.epochs, seed=args.seed)
    print(f"held-out MiniCanvas accuracy: style {style_acc:.4f}, object {object_acc:.4f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
