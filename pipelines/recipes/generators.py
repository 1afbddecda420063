"""Recipes of the shipped GAN/VAE generators (feature unlearning's base models), sized for CPU minutes.

    python -m pipelines.recipes.generators digits-vae        # -> pipelines/assets/generators/digits-vae

Each writes a generator folder (``generator.json`` with the recipe, data, seed, time and hardware,
plus ``model.safetensors``) atomically.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from erase.data.digits import load_digits_tensors
from erase.data.minicanvas import render_tensors
from pipelines.generators import (DATASETS, SHIPPED_ROOT, ConvVAE, GeneratorArtifact, GeneratorError, build_model,
                                  save_generator)


def dataset_images(dataset: str, seed: int = 0, per_cell: int = 40) -> tuple[torch.Tensor, dict]:
    """Training images (N, C, H, W) in [0, 1] and a description of them for the artifact's config."""
    if dataset == "digits":
        x, _ = load_digits_tensors(16, "train")
        return x, {"source": "sklearn.datasets.load_digits train split (erase/data/digits.py)",
                   "images": len(x), "size": "8x8 bilinearly upsampled to 16x16, 1 channel"}
    if dataset == "minicanvas":
        x, _, _ = render_tensors(per_cell, seed)
        return x, {"source": "erase.data.minicanvas render", "render_seed": seed,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a shipped generator by its recipe.")
    parser.add_argument("name", choices=sorted(RECIPES), help="recipe name (kind and dataset)")
    parser.add_argument("--out", help=f"artifact folder (default: the shipped one under {SHIPPED_ROOT})")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    recipe = RECIPES[args.name]
    if args.steps is not None:
        recipe.steps = args.steps
    if args.seed is not None:
        recipe.seed = args.seed
    art = train_generator(recipe, args.out or SHIPPED_ROOT / args.name)
    print(f"trained {args.name} in {art.config['train_seconds']} s -> {art.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
