"""Recipes of the judges: the MiniCanvas classifier, the digits classifier and the tiny MiniCanvas CLIP.

    python -m pipelines.recipes.judges classifier   # -> pipelines/assets/minicanvas_classifier
    python -m pipelines.recipes.judges digits       # -> pipelines/assets/digits_classifier
    python -m pipelines.recipes.judges clip         # -> pipelines/assets/minicanvas_clip

The classifier is trained with augmentation (blur, noise, colour and position jitter, down-up
sampling) so that it judges generated images, which are never as clean as renders, fairly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from erase.concepts import MINICANVAS
from erase.data.digits import TEST_SHARE, load_digits_tensors
from erase.data.minicanvas import render_tensors
from pipelines.judges import (CLIP_CONFIG, CLIP_WEIGHTS, DIGITS_CLASSIFIER_DIR, MINICANVAS_CLASSIFIER_DIR,
                              MINICANVAS_CLIP_DIR, DigitsClassifier, MiniCanvasClassifier, build_clip,
                              tiny_clip_config, zero_shot_grid)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


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


def heldout_accuracy(model: MiniCanvasClassifier, images: torch.Tensor, themes: torch.Tensor,
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
    model = MiniCanvasClassifier(MINICANVAS.themes, MINICANVAS.objects)
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
    style_acc, object_acc = heldout_accuracy(model.eval(), tx, tys, tyo)
    model.save_pretrained(out, {"recipe": {"per_cell": per_cell, "epochs": epochs, "batch": batch, "lr": lr,
                                           "seed": seed, "data_seed": data_seed,
                                           "train_seconds": round(time.time() - t0, 1)},
                                "held_out": {"seed": test_seed, "per_cell": test_per_cell,
                                             "style_accuracy": style_acc, "object_accuracy": object_acc}})
    return style_acc, object_acc


def train_digits_classifier(out: str | Path, epochs: int = 60, batch: int = 64, lr: float = 2e-3,
                            noise: float = 0.1, seed: int = 0) -> float:
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


@dataclass
class ClipRecipe:
    steps: int = 3000
    batch: int = 96  # a third anchors, a third same object in another style, a third same style, other object
    lr: float = 2e-3
    seed: int = 0
    data_seed: int = 3000  # MiniCanvas seed of the training renders
    per_cell: int = 100
    test_seed: int = 9100  # held-out renders for the reported zero-shot accuracy
    test_per_cell: int = 8
    hard_negatives: bool = True


def hard_negative_batch(by_cell: torch.Tensor, n_style: int, n_obj: int, batch: int,
                        gen: torch.Generator) -> torch.Tensor:
    """Image indices: anchors, then for each anchor one image of the same object in another style and
    one of the same style with another object, so the text->image loss must tell exactly these apart.

    ``by_cell``: (cells, per_cell) image indices, cell = style * n_obj + object.
    """
    n = batch // 3
    cells, per_cell = by_cell.shape
    anchor = torch.randint(0, cells, (n,), generator=gen)
    s, o = anchor // n_obj, anchor % n_obj
    other_s = (s + torch.randint(1, n_style, (n,), generator=gen)) % n_style
    other_o = (o + torch.randint(1, n_obj, (n,), generator=gen)) % n_obj
    chosen = torch.cat([anchor, other_s * n_obj + o, s * n_obj + other_o,
                        torch.randint(0, cells, (batch - 3 * n,), generator=gen)])
    return by_cell[chosen, torch.randint(0, per_cell, (batch,), generator=gen)]


def train_clip(out: str | Path, recipe: ClipRecipe = ClipRecipe(), progress: bool = True,
               model_cfg: dict | None = None) -> dict:
    """Train the MiniCanvas CLIP and write it atomically to ``out``; returns its held-out accuracy.

    Every step contrasts a batch of augmented renders with the full caption grid plus style-only
    and object-only captions (no in-batch false negatives, since the caption set is small and
    complete), so both the grid zero-shot and free-form prompts are meaningful. The grid logits
    are also marginalised per axis (log-sum-exp over the other axis) and trained with each axis's
    label: that is exactly the zero-shot rule the scorer uses. Batches hold hard negatives (same
    object in another style, same style with another object) for the text->image direction.
    """
    import open_clip  # heavy; only this recipe and the CLIP scorer need it

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    domain = MINICANVAS
    x, ys, yo = render_tensors(recipe.per_cell, recipe.data_seed)
    model_cfg = model_cfg or tiny_clip_config()
    model = build_clip(model_cfg)
    context = model_cfg["text_cfg"]["context_length"]
    full = domain.grid_prompts()
    styles = [f"An image in {domain.phrase(t)} style." for t in domain.themes]
    objects = [f"A {o} image." for o in domain.objects]
    tokens = open_clip.tokenize(full + styles + objects, context_length=context)
    n_full, n_style, n_obj = len(full), len(styles), len(domain.objects)
    cell_of = ys * n_obj + yo
    by_cell = torch.stack([torch.nonzero(cell_of == c).flatten() for c in range(n_full)])  # equal counts per cell
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    t0 = time.time()
    model.train()
    bar = tqdm(range(recipe.steps), desc="minicanvas-clip", mininterval=10, file=sys.stdout, disable=not progress)
    for _ in bar:
        idx = (hard_negative_batch(by_cell, n_style, n_obj, recipe.batch, gen) if recipe.hard_negatives
               else torch.randint(0, len(x), (recipe.batch,), generator=gen))
        img = F.normalize(model.encode_image((augment(x[idx], gen) - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        cell = ys[idx] * n_obj + yo[idx]
        grid = logits[:, :n_full].view(-1, n_style, n_obj)
        loss = (F.cross_entropy(logits[:, :n_full], cell)
                + F.cross_entropy(grid.logsumexp(2), ys[idx]) + F.cross_entropy(grid.logsumexp(1), yo[idx])
                + 0.5 * F.cross_entropy(logits[:, n_full:n_full + n_style], ys[idx])
                + 0.5 * F.cross_entropy(logits[:, n_full + n_style:], yo[idx]))
        # text -> image direction for the captions present in the batch (multi-positive)
        pos = (cell[None, :] == torch.arange(n_full)[:, None]).float()
        present = pos.sum(1) > 0
        log_p = logits[:, :n_full].T[present].log_softmax(-1)
        loss = loss + 0.5 * -(log_p * pos[present]).sum(1).div(pos[present].sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.time() - t0
    model.eval()
    tx, tys, tyo = render_tensors(recipe.test_per_cell, recipe.test_seed)
    with torch.no_grad():
        emb = F.normalize(model.encode_image((tx - mean) / std), dim=-1)
        text = F.normalize(model.encode_text(open_clip.tokenize(full, context_length=context)), dim=-1)
        ps, po = zero_shot_grid(emb, text, len(domain.themes), n_obj, float(model.logit_scale.exp()))
    held_out = {"seed": recipe.test_seed, "per_cell": recipe.test_per_cell, "images": len(tx),
                "zero_shot_style_accuracy": round((ps == tys).float().mean().item(), 4),
                "zero_shot_object_accuracy": round((po == tyo).float().mean().item(), 4),
                "zero_shot": "softmax over the 110-prompt grid, marginalised per axis"}
    config = {"model_cfg": model_cfg, "preprocess": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "size": 32},
              "tokenizer": f"open_clip.tokenize (CLIP BPE, context {context})",
              "recipe": {**asdict(recipe), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()},
              "held_out": held_out, "parameters": sum(p.numel() for p in model.parameters())}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / CLIP_WEIGHTS)
    (tmp / CLIP_CONFIG).write_text(json.dumps(config, indent=1))
    for p in [tmp, *tmp.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    if out.exists():
        for f in (CLIP_WEIGHTS, CLIP_CONFIG):
            (out / f).unlink(missing_ok=True)
        out.rmdir()
    tmp.rename(out)
    return held_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a judge: the MiniCanvas classifier, digits classifier or CLIP.")
    parser.add_argument("judge", choices=("classifier", "digits", "clip"))
    parser.add_argument("--out", help="output folder (default: the shipped one under pipelines/assets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=ClipRecipe.steps, help="clip: optimizer steps")
    parser.add_argument("--epochs", type=int, help="classifier (default 8) / digits (default 60): epochs")
    args = parser.parse_args(argv)
    if args.judge == "classifier":
        out = args.out or MINICANVAS_CLASSIFIER_DIR
        s, o = train_classifier(Path(out), epochs=args.epochs or 8, seed=args.seed)
        print(f"held-out MiniCanvas accuracy: style {s:.4f}, object {o:.4f} -> {out}")
    elif args.judge == "digits":
        out = args.out or DIGITS_CLASSIFIER_DIR
        print(f"held-out digits accuracy: {train_digits_classifier(out, args.epochs or 60, seed=args.seed):.4f} -> {out}")
    else:
        if args.steps < 1:
            print("error: --steps must be positive", file=sys.stderr)
            return 2
        out = args.out or MINICANVAS_CLIP_DIR
        held = train_clip(out, ClipRecipe(steps=args.steps, seed=args.seed))
        print(f"held-out zero-shot accuracy: style {held['zero_shot_style_accuracy']:.4f}, "
              f"object {held['zero_shot_object_accuracy']:.4f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
