"""Small generators for feature unlearning: a convolutional VAE and a DCGAN-style GAN.

Both map a latent vector z ~ N(0, I) to an image in [0, 1] through one module, ``sampler()``
(the VAE's decoder, the GAN's generator); that module is all feature unlearning needs and all it
changes. A *generator artifact* is a folder:

    generator.json      format, kind (vae|gan), dataset, latent_dim, image_size, channels, width,
                        recipe (steps, batch, lr, seed, data), training time and hardware
    model.safetensors   every tensor of the model (VAE: encoder + decoder; GAN: generator + discriminator)
    erase.json          only in an unlearned artifact: method, feature, config, base model and hash

so an unlearned generator loads like any other. Training recipes below are sized for a few CPU
minutes; ``python -m pipelines.generators train --kind vae --dataset digits`` rebuilds a shipped one.
Sampling is reproducible per index: latent i of seed s is ``np.random.default_rng([s, i])``'s
standard normal vector, so a user who labels sample 17 of seed 0 names the same latent anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from erase.checkpoint import CheckpointError, read_tensors

FORMAT = "erase-generator"
CONFIG = "generator.json"
WEIGHTS = "model.safetensors"
ERASE_JSON = "erase.json"
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
    """z -> Linear -> (C, 4, 4) -> stride-2 transposed convs -> sigmoid image; optional BatchNorm (DCGAN)."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int, batchnorm: bool = False):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        n = _levels(image_size)
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 128, 64, 32
        self.fc = nn.Linear(latent_dim, widths[0] * 16)
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
        h = F.relu(self.fc_norm(self.fc(z)))
        return self.up(h.view(len(z), self.first, 4, 4))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


class ConvEncoder(nn.Module):
    """image -> stride-2 convs down to 4x4 -> Linear -> (mu, logvar) or one score."""

    def __init__(self, channels: int, image_size: int, width: int, out: int, leaky: bool = False):
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
        self.fc = nn.Linear(cin * 16, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.down(x))


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

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.generator = ConvDecoder(latent_dim, channels, image_size, width, batchnorm=True)
        self.discriminator = ConvEncoder(channels, image_size, width, 1, leaky=True)

    def sampler(self) -> nn.Module:
        return self.generator


def build_model(kind: str, latent_dim: int, channels: int, image_size: int, width: int) -> nn.Module:
    if kind == "vae":
        return ConvVAE(latent_dim, channels, image_size, width)
    if kind == "gan":
        return DCGAN(latent_dim, channels, image_size, width)
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


def weights_hash(path: str | Path) -> str:
    """sha256 of an artifact's weights file (first 16 hex digits), to name the base of an unlearned model."""
    return hashlib.sha256((Path(path) / WEIGHTS).read_bytes()).hexdigest()[:16]


def save_generator(folder: str | Path, model: nn.Module, config: dict, extra_files: dict[str, dict] | None = None
                   ) -> Path:
    """Write an artifact atomically: a temp folder beside ``folder``, renamed into place when complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(dict(config, format=FORMAT), indent=1))
        for name, payload in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=1))
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
                            int(cfg["width"]))
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


# --------------------------------------------------------------------------- data and recipes
def dataset_images(dataset: str, seed: int = 0, per_cell: int = 40) -> tuple[torch.Tensor, dict]:
    """Training images (N, C, H, W) in [0, 1] and a description of them for the artifact's config."""
    if dataset == "digits":
        from benchmarks.digits import load_digits_tensors

        x, _ = load_digits_tensors(16, "train")
        return x, {"source": "sklearn.datasets.load_digits train split (benchmarks/digits.py)",
                   "images": len(x), "size": "8x8 bilinearly upsampled to 16x16, 1 channel"}
    if dataset == "minicanvas":
        from benchmarks.unlearncanvas.classifier import render_tensors

        x, _, _ = render_tensors(per_cell, seed)
        return x, {"source": "benchmarks.unlearncanvas.minicanvas render", "render_seed": seed,
                   "per_cell": per_cell, "images": len(x), "size": "32x32 RGB, 11 themes x 10 objects"}
    raise GeneratorError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


@dataclass
class Recipe:
    """Training settings; the defaults per (kind, dataset) are in ``RECIPES``, sized for a few CPU minutes."""

    kind: str
    dataset: str
    latent_dim: int
    width: int
    steps: int
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0
    beta_kl: float = 1.0  # VAE: weight of the KL term (1 = the ELBO)
    betas: tuple[float, float] = (0.9, 0.999)
    data: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    # latent 8 for digits as in the reference prototype (shared/reference/gan_vae.md section 5)
    "digits-vae": Recipe("vae", "digits", latent_dim=8, width=32, steps=4000, batch=64, lr=2e-3),
    "minicanvas-vae": Recipe("vae", "minicanvas", latent_dim=32, width=32, steps=4000, batch=64, lr=1e-3),
    # DCGAN: Adam 2e-4, beta1 0.5 (Radford et al. 2015, section 4)
    "digits-gan": Recipe("gan", "digits", latent_dim=8, width=32, steps=4000, batch=64, lr=2e-4, betas=(0.5, 0.999)),
    "minicanvas-gan": Recipe("gan", "minicanvas", latent_dim=32, width=32, steps=5000, batch=64, lr=2e-4,
                             betas=(0.5, 0.999)),
}


def _vae_step(model: ConvVAE, x: torch.Tensor, gen: torch.Generator, beta: float) -> torch.Tensor:
    mu, logvar = model.encode(x)
    z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
    rec = F.binary_cross_entropy_with_logits(model.decoder.logits(z), x, reduction="sum") / len(x)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / len(x)
    return rec + beta * kl


def train_generator(recipe: Recipe, out: str | Path | None = None, log_every: int = 500) -> GeneratorArtifact:
    """Train by ``recipe`` (seeded) and, with ``out``, save the artifact there."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    x, data = dataset_images(recipe.dataset, recipe.seed, **recipe.data)
    channels, size = x.shape[1], x.shape[-1]
    model = build_model(recipe.kind, recipe.latent_dim, channels, size, recipe.width)
    t0 = time.time()
    if recipe.kind == "vae":
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
        model.train()
        for step in range(recipe.steps):
            loss = _vae_step(model, x[torch.randint(0, len(x), (recipe.batch,), generator=gen)], gen, recipe.beta_kl)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log_every and (step + 1) % log_every == 0:
                print(f"  step {step + 1}/{recipe.steps} loss {loss.item():.2f}", file=sys.stderr)
    else:
        g, d = model.generator, model.discriminator
        opt_g = torch.optim.Adam(g.parameters(), lr=recipe.lr, betas=recipe.betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=recipe.lr, betas=recipe.betas)
        model.train()
        for step in range(recipe.steps):
            real = x[torch.randint(0, len(x), (recipe.batch,), generator=gen)]
            fake = g(torch.randn(recipe.batch, recipe.latent_dim, generator=gen))
            ones, zeros = torch.ones(recipe.batch, 1), torch.zeros(recipe.batch, 1)
            loss_d = F.binary_cross_entropy_with_logits(d(real * 2 - 1), ones) + \
                F.binary_cross_entropy_with_logits(d(fake.detach() * 2 - 1), zeros)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = F.binary_cross_entropy_with_logits(d(fake * 2 - 1), ones)  # non-saturating G loss
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if log_every and (step + 1) % log_every == 0:
                print(f"  step {step + 1}/{recipe.steps} D {loss_d.item():.3f} G {loss_g.item():.3f}", file=sys.stderr)
        recalibrate_batchnorm(g, recipe.latent_dim, gen)
    model.eval()
    cfg = {"kind": recipe.kind, "dataset": recipe.dataset, "latent_dim": recipe.latent_dim, "channels": channels,
           "image_size": size, "width": recipe.width, "recipe": asdict(recipe), "data": data,
           "train_seconds": round(time.time() - t0, 1),
           "hardware": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}"}
    if out is not None:
        save_generator(out, model, cfg)
    return GeneratorArtifact(model, cfg, Path(out) if out is not None else None)


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, latent_dim: int, gen: torch.Generator, batches: int = 50,
                          batch: int = 256) -> None:
    """Replace BatchNorm running statistics by exact averages over prior samples, so eval mode matches training."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    module.train()
    for _ in range(batches):
        module(torch.randn(batch, latent_dim, generator=gen))
    for m in norms:
        m.momentum = 0.1
    module.eval()


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
    parser = argparse.ArgumentParser(description="Train generators, or draw numbered samples for labelling.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a generator by its recipe")
    tr.add_argument("name", choices=sorted(RECIPES), help="recipe name (kind and dataset)")
    tr.add_argument("--out", help=f"artifact folder (default: the shipped one under {SHIPPED_ROOT})")
    tr.add_argument("--steps", type=int)
    tr.add_argument("--seed", type=int)
    sa = sub.add_parser("sample", help="write a numbered contact sheet of seeded samples to label by hand")
    sa.add_argument("--model", required=True)
    sa.add_argument("--count", type=int, default=200)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            recipe = RECIPES[args.name]
            if args.steps is not None:
                recipe.steps = args.steps
            if args.seed is not None:
                recipe.seed = args.seed
            art = train_generator(recipe, args.out or SHIPPED_ROOT / args.name)
            print(f"trained {args.name} in {art.config['train_seconds']} s -> {art.path}")
        else:
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
    except (GeneratorError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
