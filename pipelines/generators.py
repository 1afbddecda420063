"""Small generators for feature unlearning: a convolutional VAE and a DCGAN-style GAN.

Both map a latent vector z ~ N(0, I) to an image in [0, 1] through one module, ``sampler()``
(the VAE's decoder, the GAN's generator); that module is all feature unlearning needs and all it
changes. A *generator artifact* is a folder:

    generator.json      format, kind (vae|gan), dataset, latent_dim, image_size, channels, width,
                        spectral_norm, minibatch_std and aux_classes (GAN discriminator), class_inputs
                        (GAN generator), recipe (steps, batch, lr, seed, data), training time and hardware
    model.safetensors   every tensor of the model (VAE: encoder + decoder; GAN: generator + discriminator)
    erase.json          only in an unlearned artifact: method, feature, config, base model and hash

Training recipes live in ``pipelines/recipes/generators.py`` (``python -m pipelines.recipes.generators
digits-vae`` rebuilds a shipped one); an unlearned generator is an erase artifact (``erase.artifacts``)
that stores only the changed sampler on top of its base generator.
Sampling is reproducible per index: latent i of seed s is ``np.random.default_rng([s, i])``'s
standard normal vector, so a user who labels sample 17 of seed 0 names the same latent anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from pipelines.weights import CheckpointError, read_tensors

FORMAT = "erase-generator"
CONFIG = "generator.json"
WEIGHTS = "model.safetensors"
SHIPPED_ROOT = Path(__file__).parent / "assets" / "generators"
DATASETS = ("digits", "minicanvas")
KINDS = ("vae", "gan")


class GeneratorError(CheckpointError):
    """A generator artifact that is missing, malformed or does not fit; the message is one line."""


# --------------------------------------------------------------------------- models
def _levels(image_size: int) -> int:
    if image_size < 8 or image_size & (image_size - 1):
        raise GeneratorError(f"image_size must be a power of two >= 8, got {image_size}")
    return int(math.log2(image_size // 4))


class ConvDecoder(nn.Module):
    """z -> Linear -> (C, 4, 4) -> stride-2 transposed convs -> sigmoid image; optional BatchNorm (DCGAN).

    ``class_inputs`` (class counts per block of z): the Linear layer also reads the one-hot code of each
    block's largest coordinate (``latent_classes``), so the class a latent names is a clean input and
    never a blend of two near a cone's boundary; the module still maps z alone to an image.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int, batchnorm: bool = False,
                 class_inputs: Sequence[int] = ()):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.class_inputs = tuple(class_inputs)
        n = _levels(image_size)
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 128, 64, 32
        self.fc = nn.Linear(latent_dim + sum(self.class_inputs), widths[0] * 16)
        self.fc_norm = nn.BatchNorm1d(widths[0] * 16) if batchnorm else nn.Identity()
        layers: list[nn.Module] = []
        for i in range(n - 1):
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1)]
            layers += [nn.BatchNorm2d(widths[i + 1])] if batchnorm else []
            layers += [nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1)]
        self.up = nn.Sequential(*layers)
        self.first = widths[0]

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.class_inputs:
            codes = [F.one_hot(y, n).to(z.dtype) for y, n in zip(latent_classes(z, self.class_inputs), self.class_inputs)]
            z = torch.cat([z, *codes], 1)
        h = F.relu(self.fc_norm(self.fc(z)))
        return self.up(h.view(len(z), self.first, 4, 4))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


class ConvEncoder(nn.Module):
    """image -> stride-2 convs down to 4x4 -> Linear -> (mu, logvar) or one score.

    ``minibatch_std`` (a GAN discriminator; Karras et al. 2018, section 3) adds the batch's mean feature
    standard deviation as one more 4x4 channel before the Linear layer, so the discriminator sees how
    varied a batch is and a generator that drops modes is penalised.
    """

    def __init__(self, channels: int, image_size: int, width: int, out: int, leaky: bool = False,
                 minibatch_std: bool = False):
        super().__init__()
        n = _levels(image_size)
        act = (lambda: nn.LeakyReLU(0.2, inplace=True)) if leaky else (lambda: nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = channels
        for i in range(n):
            cout = width * 2 ** i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), act()]
            cin = cout
        self.down = nn.Sequential(*layers, nn.Flatten())
        self.minibatch_std = minibatch_std
        self.fc = nn.Linear((cin + int(minibatch_std)) * 16, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.minibatch_std:
            return self.fc(self.down(x))
        h = self.down[:-1](x)
        spread = h.std(dim=0, unbiased=False).mean() if len(h) > 1 else h.new_zeros(())
        return self.fc(torch.cat([h, spread.expand(len(h), 1, *h.shape[2:])], 1).flatten(1))


class ConvVAE(nn.Module):
    """Convolutional VAE (Kingma & Welling 2014); unlearning touches only ``decoder`` (reference section 2)."""

    kind = "vae"

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(channels, image_size, width, 2 * latent_dim)
        self.decoder = ConvDecoder(latent_dim, channels, image_size, width)

    def sampler(self) -> nn.Module:
        return self.decoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x * 2 - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


class DCGAN(nn.Module):
    """DCGAN (Radford et al. 2015): BatchNorm generator, LeakyReLU discriminator; unlearning touches ``generator``."""

    kind = "gan"

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int, spectral_norm: bool = False,
                 minibatch_std: bool = False, aux_classes: Sequence[int] = (), class_inputs: bool = False):
        super().__init__()
        self.latent_dim, self.aux_classes = latent_dim, tuple(aux_classes)
        if sum(self.aux_classes) > latent_dim:
            raise GeneratorError(f"aux_classes {list(aux_classes)} need {sum(aux_classes)} latent coordinates, "
                                 f"latent_dim is {latent_dim}")
        if class_inputs and not self.aux_classes:
            raise GeneratorError("class_inputs needs aux_classes: the codes are of the classes the latent names")
        self.generator = ConvDecoder(latent_dim, channels, image_size, width, batchnorm=True,
                                     class_inputs=self.aux_classes if class_inputs else ())
        # column 0: the real/fake score; then one block of class logits per aux head (AC-GAN, Odena et al. 2017)
        self.discriminator = ConvEncoder(channels, image_size, width, 1 + sum(self.aux_classes), leaky=True,
                                         minibatch_std=minibatch_std)
        if spectral_norm:  # SN-GAN (Miyato et al. 2018): every discriminator layer 1-Lipschitz
            for layer in self.discriminator.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(layer)

    def sampler(self) -> nn.Module:
        return self.generator


def latent_classes(z: torch.Tensor, aux_classes: Sequence[int]) -> list[torch.Tensor]:
    """The class a latent asks for, per aux head: the largest of the head's block of coordinates.

    Head 0 reads z[:, :n0], head 1 the next n1 coordinates, and so on. The coordinates of z ~ N(0, I)
    are independent, so every class of a head is equally likely and the heads are independent of each
    other; a class is the cone where its coordinate leads, which is what makes it linearly editable.
    """
    labels, start = [], 0
    for n in aux_classes:
        labels.append(z[:, start:start + n].argmax(1))
        start += n
    return labels


def build_model(kind: str, latent_dim: int, channels: int, image_size: int, width: int,
                spectral_norm: bool = False, minibatch_std: bool = False, aux_classes: Sequence[int] = (),
                class_inputs: bool = False) -> nn.Module:
    if kind == "vae":
        return ConvVAE(latent_dim, channels, image_size, width)
    if kind == "gan":
        return DCGAN(latent_dim, channels, image_size, width, spectral_norm, minibatch_std, aux_classes, class_inputs)
    raise GeneratorError(f"unknown generator kind {kind!r}; known: {', '.join(KINDS)}")


# --------------------------------------------------------------------------- artifacts
@dataclass
class GeneratorArtifact:
    """A loaded generator: the model, its ``generator.json`` and where it came from."""

    model: nn.Module
    config: dict
    path: Path | None = None

    @property
    def latent_dim(self) -> int:
        return int(self.config["latent_dim"])

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", ""))

    def sampler(self) -> nn.Module:
        """The module z -> image; any ``nn.Module`` without a ``sampler()`` is its own sampler."""
        return self.model.sampler() if hasattr(self.model, "sampler") else self.model

    @torch.no_grad()
    def generate(self, z: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] for latents (N, latent_dim), the sampler in eval mode."""
        return generate(self.sampler(), z, batch_size)


@torch.no_grad()
def generate(sampler: nn.Module, z: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = sampler.training
    sampler.eval()
    out = torch.cat([sampler(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])
    sampler.train(was_training)
    return out


def seeded_latents(seed: int, count: int, latent_dim: int, start: int = 0) -> torch.Tensor:
    """Latents of samples ``start .. start+count-1`` of ``seed``; latent i depends only on (seed, i)."""
    if count < 0 or latent_dim < 1:
        raise GeneratorError(f"need count >= 0 and latent_dim >= 1, got {count} and {latent_dim}")
    rows = [np.random.default_rng([seed, i]).standard_normal(latent_dim) for i in range(start, start + count)]
    return torch.tensor(np.stack(rows) if rows else np.zeros((0, latent_dim)), dtype=torch.float32)


def save_generator(folder: str | Path, model: nn.Module, config: dict) -> Path:
    """Write an artifact atomically: a temp folder beside ``folder``, renamed into place when complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(dict(config, format=FORMAT), indent=1))
        for f in (tmp / WEIGHTS, tmp / CONFIG):
            os.chmod(f, 0o644)  # safetensors writes 0600; an artifact is meant to be shared
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def resolve_generator(name_or_path: str | Path) -> Path:
    """A folder path, or the name of a shipped generator (e.g. ``digits-vae``)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = SHIPPED_ROOT / str(name_or_path)
    if shipped.is_dir():
        return shipped
    known = ", ".join(sorted(p.name for p in SHIPPED_ROOT.glob("*") if p.is_dir())) if SHIPPED_ROOT.is_dir() else ""
    raise GeneratorError(f"generator {str(name_or_path)!r} not found: not a folder and not a shipped generator"
                         + (f" (shipped: {known})" if known else ""))


def load_generator(name_or_path: str | Path) -> GeneratorArtifact:
    """Load an artifact, insisting that its config is complete and every tensor fits (strict)."""
    path = resolve_generator(name_or_path)
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise GeneratorError(f"{path} is not a generator artifact: no {CONFIG}")
    try:
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("format") != FORMAT:
            raise GeneratorError(f"{cfg_file} is not an {FORMAT} config (format={cfg.get('format')!r})")
        model = build_model(cfg["kind"], int(cfg["latent_dim"]), int(cfg["channels"]), int(cfg["image_size"]),
                            int(cfg["width"]), bool(cfg.get("spectral_norm", False)),
                            bool(cfg.get("minibatch_std", False)), [int(n) for n in cfg.get("aux_classes", [])],
                            bool(cfg.get("class_inputs", False)))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, GeneratorError):
            raise
        raise GeneratorError(f"malformed {cfg_file}: {type(err).__name__} {err}") from err
    try:
        model.load_state_dict(read_tensors(path / WEIGHTS), strict=True)
    except CheckpointError as err:
        raise GeneratorError(str(err)) from err
    except RuntimeError as err:
        raise GeneratorError(f"{path / WEIGHTS} does not fit the {cfg['kind']} in {CONFIG}: "
                             f"{str(err).splitlines()[0]}") from err
    return GeneratorArtifact(model.eval(), cfg, path)


# --------------------------------------------------------------------------- contact sheets
def contact_sheet(images: torch.Tensor, columns: int = 20, scale: int = 3, first_index: int = 0):
    """A PIL picture of numbered samples, so a user can write down which indices show a feature."""
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    arr = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    cw, ch, label = w * scale, h * scale, 11
    rows = (n + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cw + 2), rows * (ch + label + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % columns) * (cw + 2), (i // columns) * (ch + label + 2)
        draw.text((x + 1, y), str(first_index + i), fill="black")
        sheet.paste(Image.fromarray(arr[i]).resize((cw, ch), Image.NEAREST), (x, y + label))
    return sheet


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a numbered contact sheet of seeded samples to label by hand.")
    parser.add_argument("command", choices=("sample",))
    parser.add_argument("--model", required=True, help="generator folder or shipped name (digits-vae, ...)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    try:
        art = load_generator(args.model)
        if args.count < 1:
            raise GeneratorError("--count must be at least 1")
        images = art.generate(seeded_latents(args.seed, args.count, art.latent_dim))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.png")
        contact_sheet(images).save(tmp)
        tmp.rename(out)
        print(f"{args.count} samples of seed {args.seed} -> {out}; label them in a JSON file: "
              f'{{"seed": {args.seed}, "count": {args.count}, "latent_dim": {art.latent_dim}, "positive": [...]}}')
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
