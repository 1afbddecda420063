"""Recipes of the shipped GAN/VAE generators (feature unlearning's base models), sized for CPU minutes.

    python -m pipelines.recipes.generators digits-vae        # -> pipelines/assets/generators/digits-vae
    python -m pipelines.recipes.generators minicanvas-gan    # checkpoints in runs/generators/; rerun resumes

Each writes a generator folder (``generator.json`` with the recipe, data, seed, time and hardware,
plus ``model.safetensors``) atomically.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from erase import checkpoint as ckpt
from erase.data.digits import load_digits_tensors
from erase.data.minicanvas import render_tensors
from pipelines.generators import (DATASETS, SHIPPED_ROOT, ConvVAE, GeneratorArtifact, GeneratorError, build_model,
                                  latent_classes, save_generator)
from pipelines.weights import CheckpointError


def dataset_images(dataset: str, seed: int = 0, per_cell: int = 40) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    """Training images (N, C, H, W) in [0, 1], their labels (digits: digit; MiniCanvas: style, object) and a
    description of them for the artifact's config."""
    if dataset == "digits":
        x, y = load_digits_tensors(16, "train")
        return x, [y], {"source": "sklearn.datasets.load_digits train split (erase/data/digits.py)",
                        "images": len(x), "size": "8x8 bilinearly upsampled to 16x16, 1 channel"}
    if dataset == "minicanvas":
        x, themes, objects = render_tensors(per_cell, seed)
        return x, [themes, objects], {"source": "erase.data.minicanvas render", "render_seed": seed,
                                      "per_cell": per_cell, "images": len(x),
                                      "size": "32x32 RGB, 11 themes x 10 objects"}
    raise GeneratorError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


LOSSES = ("bce", "hinge")


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
    loss: str = "bce"  # GAN: "bce" (non-saturating, DCGAN) or "hinge" (SN-GAN)
    spectral_norm: bool = False  # GAN: spectral normalisation of every discriminator layer (Miyato et al. 2018)
    minibatch_std: bool = False  # GAN: the batch's feature spread as a discriminator input (Karras et al. 2018)
    # GAN: AC-GAN (Odena et al. 2017) heads in D, one per label kind of the data, trained on the real labels;
    # the generator is asked for the class its latent names (``latent_classes``: the leading coordinate of a block)
    latent_classes: bool = False
    aux_weight: float = 1.0  # weight of the class terms beside the adversarial loss
    class_inputs: bool = False  # the generator also reads the one-hot of its latent's classes (ConvDecoder)
    checkpoint_every: int = 500
    data: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    # latent 8 for digits as in the reference prototype (shared/reference/gan_vae.md section 5)
    "digits-vae": Recipe("vae", "digits", latent_dim=8, width=32, steps=4000, batch=64, lr=2e-3),
    "minicanvas-vae": Recipe("vae", "minicanvas", latent_dim=32, width=32, steps=4000, batch=64, lr=1e-3),
    # DCGAN: Adam 2e-4, beta1 0.5 (Radford et al. 2015, section 4)
    "digits-gan": Recipe("gan", "digits", latent_dim=8, width=32, steps=4000, batch=64, lr=2e-4, betas=(0.5, 0.999)),
    # SN-GAN (Miyato et al. 2018): hinge loss, spectral norm in D; Adam 2e-4, betas (0, 0.9), one D step per G step,
    # plus the minibatch standard deviation in D (Karras et al. 2018), and an AC-GAN (Odena et al. 2017): D also
    # learns each real render's style and object, G is asked for the style named by the largest of z[:11] and the
    # object named by the largest of z[11:21] and reads their one-hot codes beside z (class_inputs), so every class
    # is a cone of z: linearly editable, the setting feature unlearning assumes. On the 2,000-sample check after
    # 6,000 steps: 100 % confident style, rarest object 5.75 %, FD_clf 3.9 (class weight 0.3: rarest object 4.95 %,
    # FD_clf 5.4). Without the codes (cones only) the same AC-GAN drew 38-59 % confident styles in 6,000-16,000
    # steps: latents near a cone's boundary were drawn as blends (README "Shipped generators")
    "minicanvas-gan": Recipe("gan", "minicanvas", latent_dim=32, width=32, steps=6000, batch=64,
                             lr=2e-4, betas=(0.0, 0.9), loss="hinge", spectral_norm=True, minibatch_std=True,
                             latent_classes=True, class_inputs=True, data={"per_cell": 60}),
    # Not shipped: the unconditional SN-GAN that minicanvas-gan was before (12,000 steps: 84.5 % confident style,
    # Moon 2.5 %, FD_clf 12.4), kept to reproduce the README's comparison. Without the minibatch standard deviation
    # it lost the Neon style (0.05 % of 2,000 samples after 6,000 steps). Its objects are not linearly editable.
    "minicanvas-sngan": Recipe("gan", "minicanvas", latent_dim=32, width=32, steps=12000, batch=64,
                               lr=2e-4, betas=(0.0, 0.9), loss="hinge", spectral_norm=True, minibatch_std=True,
                               data={"per_cell": 60}),
}


def _vae_loss(model: ConvVAE, x: torch.Tensor, gen: torch.Generator, beta: float) -> torch.Tensor:
    mu, logvar = model.encode(x)
    z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
    rec = F.binary_cross_entropy_with_logits(model.decoder.logits(z), x, reduction="sum") / len(x)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / len(x)
    return rec + beta * kl


def _class_loss(out: torch.Tensor, labels: list[torch.Tensor], classes: Sequence[int], weight: float) -> torch.Tensor:
    """AC-GAN term: cross-entropy of each block of class logits after D's real/fake column against its labels."""
    heads = out[:, 1:].split(list(classes), dim=1)
    return weight * sum(F.cross_entropy(h, y) for h, y in zip(heads, labels))


def _gan_losses(g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, loss: str,
                aux: tuple[list[torch.Tensor], list[torch.Tensor], Sequence[int], float] | None = None):
    """(discriminator loss, a function giving the generator loss after D's step) for one batch.

    ``aux`` = (real labels, latent labels, classes per head, weight): D learns the real images' classes,
    G is asked to draw the class its latent names; column 0 of D's output is the real/fake score.
    """
    fake = g(z)
    out_real, out_fake = d(real * 2 - 1), d(fake.detach() * 2 - 1)  # in this order, as before the AC-GAN option
    if loss == "hinge":
        loss_d = F.relu(1 - out_real[:, :1]).mean() + F.relu(1 + out_fake[:, :1]).mean()
        adversarial_g = lambda out: -out[:, :1].mean()  # noqa: E731
    else:
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        loss_d = F.binary_cross_entropy_with_logits(out_real[:, :1], ones) + \
            F.binary_cross_entropy_with_logits(out_fake[:, :1], zeros)
        adversarial_g = lambda out: F.binary_cross_entropy_with_logits(out[:, :1], ones)  # noqa: E731  non-saturating
    if aux is None:
        return loss_d, lambda: adversarial_g(d(fake * 2 - 1))
    real_labels, latent_labels, classes, weight = aux

    def loss_g() -> torch.Tensor:
        out = d(fake * 2 - 1)
        return adversarial_g(out) + _class_loss(out, latent_labels, classes, weight)
    return loss_d + _class_loss(out_real, real_labels, classes, weight), loss_g


def train_generator(recipe: Recipe, out: str | Path | None = None, log_every: int = 500,
                    work: str | Path | None = None) -> GeneratorArtifact:
    """Train by ``recipe`` (seeded) and, with ``out``, save the artifact there.

    With ``work``, the models, optimizers and random state are checkpointed there every
    ``recipe.checkpoint_every`` steps and a rerun resumes from the last one (same weights as an
    uninterrupted run); the checkpoint is refused when it was made by another recipe (for a GAN,
    one that differs only in ``steps`` is continued: more steps extend the training).
    """
    if recipe.loss not in LOSSES:
        raise GeneratorError(f"unknown GAN loss {recipe.loss!r}; known: {', '.join(LOSSES)}")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    x, labels, data = dataset_images(recipe.dataset, recipe.seed, **recipe.data)
    channels, size = x.shape[1], x.shape[-1]
    aux_classes = [int(y.max()) + 1 for y in labels] if recipe.latent_classes else []
    model = build_model(recipe.kind, recipe.latent_dim, channels, size, recipe.width,
                        spectral_norm=recipe.spectral_norm, minibatch_std=recipe.minibatch_std,
                        aux_classes=aux_classes, class_inputs=recipe.class_inputs)
    if recipe.kind == "vae":
        parts = {"model": model}
        opts = {"model": torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)}
    else:
        parts = {"generator": model.generator, "discriminator": model.discriminator}
        opts = {k: torch.optim.Adam(m.parameters(), lr=recipe.lr, betas=recipe.betas) for k, m in parts.items()}
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opts["model"], recipe.steps) if recipe.kind == "vae" else None
    start, seconds = _resume(work, recipe, parts, opts, gen, sched)
    t0 = time.time() - seconds
    model.train()
    for step in range(start, recipe.steps):
        if recipe.kind == "vae":
            loss = _vae_loss(model, x[torch.randint(0, len(x), (recipe.batch,), generator=gen)], gen, recipe.beta_kl)
            _step(opts["model"], loss)
            sched.step()
            shown = f"loss {loss.item():.2f}"
        else:
            pick = torch.randint(0, len(x), (recipe.batch,), generator=gen)
            z = torch.randn(recipe.batch, recipe.latent_dim, generator=gen)
            aux = ([y[pick] for y in labels], latent_classes(z, aux_classes), aux_classes, recipe.aux_weight) \
                if aux_classes else None
            loss_d, loss_g = _gan_losses(model.generator, model.discriminator, x[pick], z, recipe.loss, aux)
            _step(opts["discriminator"], loss_d)
            loss = loss_g()
            _step(opts["generator"], loss)
            shown = f"D {loss_d.item():.3f} G {loss.item():.3f}"
        if not torch.isfinite(loss):
            raise GeneratorError(f"loss became {loss.item()} at step {step}; stopping")
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{recipe.steps} {shown}", file=sys.stderr, flush=True)
        if work is not None and ((step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.steps):
            _checkpoint(work, recipe, parts, opts, gen, sched, step + 1, time.time() - t0)
    if recipe.kind == "gan":
        recalibrate_batchnorm(model.generator, recipe.latent_dim, gen)
    model.eval()
    cfg = {"kind": recipe.kind, "dataset": recipe.dataset, "latent_dim": recipe.latent_dim, "channels": channels,
           "image_size": size, "width": recipe.width, "spectral_norm": recipe.spectral_norm,
           "minibatch_std": recipe.minibatch_std, "aux_classes": aux_classes, "class_inputs": recipe.class_inputs,
           "recipe": asdict(recipe), "data": data, "train_seconds": round(time.time() - t0, 1),
           "hardware": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}"}
    if out is not None:
        save_generator(out, model, cfg)
    return GeneratorArtifact(model, cfg, Path(out) if out is not None else None)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _recipe_json(recipe: Recipe) -> dict:
    """The recipe as a checkpoint stores it (tuples become lists), so a saved one compares equal."""
    return json.loads(json.dumps(asdict(recipe)))


def _checkpoint(work: str | Path, recipe: Recipe, parts: dict, opts: dict, gen: torch.Generator, sched, step: int,
                seconds: float) -> None:
    tensors = dict(ckpt.rng_tensors(gen))
    meta = {"step": step, "seconds": round(seconds, 1), "recipe": _recipe_json(recipe), "optimizers": {}}
    for key, module in parts.items():
        tensors.update(ckpt.module_tensors(module, key))
        opt_tensors, meta["optimizers"][key] = ckpt.optimizer_tensors(opts[key], f"optimizer_{key}")
        tensors.update(opt_tensors)
    if sched is not None:
        meta["scheduler"] = sched.state_dict()
    ckpt.save_checkpoint(Path(work), tensors, meta)


def _resume(work: str | Path | None, recipe: Recipe, parts: dict, opts: dict, gen: torch.Generator, sched) -> tuple[int, float]:
    state = ckpt.load_checkpoint(work) if work is not None else None
    if state is None:
        return 0, 0.0
    tensors, meta = state
    saved, asked = dict(meta.get("recipe") or {}), _recipe_json(recipe)
    if recipe.kind == "gan":  # a GAN's steps have no schedule: a rerun with more steps trains on
        saved.pop("steps", None)
        asked.pop("steps")
    if saved != asked or meta["step"] > recipe.steps:
        raise GeneratorError(f"{work} holds a checkpoint of another recipe; remove it or use another --work")
    for key, module in parts.items():
        ckpt.load_module(module, tensors, key)
        ckpt.load_optimizer(opts[key], tensors, meta["optimizers"][key], f"optimizer_{key}")
    if sched is not None:
        sched.load_state_dict(meta["scheduler"])
    ckpt.load_rng(tensors, gen)
    print(f"  resumed at step {meta['step']} of {recipe.steps}", file=sys.stderr, flush=True)
    return int(meta["step"]), float(meta["seconds"])


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
    parser.add_argument("--work", default="runs/generators", help="checkpoints go to <work>/<name>; a rerun resumes "
                        "('' for none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.name]
    if args.steps is not None:
        recipe.steps = args.steps
    if args.seed is not None:
        recipe.seed = args.seed
    try:
        art = train_generator(recipe, args.out or SHIPPED_ROOT / args.name,
                              work=Path(args.work) / args.name if args.work else None)
    except (GeneratorError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"trained {args.name} in {art.config['train_seconds']} s -> {art.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
