"""CLIP scorers for concept-removal accuracy, CLIP score and the CLIP-feature Frechet distance.

Two sources, one ``ClipScorer`` interface:

* the embedded MiniCanvas CLIP: an ``open_clip.CLIP`` built from the tiny config below (ViT
  vision tower on 32 px, 77-token text transformer over the real CLIP BPE vocabulary), trained
  contrastively on MiniCanvas renders and their captions by ``train_clip`` and shipped in
  ``assets/minicanvas_clip`` (safetensors + JSON config with its held-out zero-shot accuracy);
* any open_clip architecture and pretrained tag or weights file the user names, loaded with
  ``open_clip.create_model_and_transforms``.

Zero-shot assignment scores an image against the domain's whole prompt grid (``A {object}
image in {style} style.`` for every style and object) and sums the softmax over the other
axis, so it uses exactly the prompts the answer set was generated from.

    python -m benchmarks.unlearncanvas.clip --out benchmarks/unlearncanvas/assets/minicanvas_clip
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from benchmarks.unlearncanvas import minicanvas
from benchmarks.unlearncanvas.constants import Domain
from erase.checkpoint import CheckpointError, read_tensors

SHIPPED_DIR = Path(__file__).parent / "assets" / "minicanvas_clip"
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_model_config() -> dict:
    """open_clip model config of the MiniCanvas CLIP (about 3.7 M parameters, 15 MB in float32)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    }


def build_model(model_cfg: dict):
    """An ``open_clip.CLIP`` from a config dict in open_clip's own model-config format."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    return open_clip.CLIP(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]),
                          CLIPTextCfg(**model_cfg["text_cfg"]))


def style_phrase(domain: Domain, theme: str) -> str:
    return "Photo" if theme == domain.photo_theme else theme.replace("_", " ")


def grid_prompts(domain: Domain, photo_phrase: str = "Photo") -> list[str]:
    """The domain's prompt grid in (theme, object) row-major order, themes in label order."""
    return [domain.prompt(t, o, photo_phrase) for t in domain.themes for o in domain.objects]


# --------------------------------------------------------------------------- scorer
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
    def from_minicanvas(cls, folder: str | Path = SHIPPED_DIR, device: str | torch.device = "cpu") -> "ClipScorer":
        """The shipped (or a re-trained) MiniCanvas CLIP; a bad folder raises ``CheckpointError``."""
        import open_clip

        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise CheckpointError(f"no MiniCanvas CLIP in {folder} (needs {CONFIG} and {WEIGHTS})")
        try:
            cfg = json.loads((folder / CONFIG).read_text())
            model = build_model(cfg["model_cfg"])
            model.load_state_dict(read_tensors(folder / WEIGHTS), strict=True)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"corrupt MiniCanvas CLIP in {folder}: {str(err).splitlines()[0]}") from err
        pre = cfg.get("preprocess", {})
        return cls(model, f"minicanvas-clip ({folder.name}, open_clip ViT {cfg['model_cfg']['vision_cfg']['width']}w)",
                   cfg["model_cfg"]["vision_cfg"]["image_size"], pre.get("mean", OPENAI_MEAN),
                   pre.get("std", OPENAI_STD), open_clip.tokenize, device, cfg.get("held_out"))

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
        return cls(model, f"open_clip {arch} ({pretrained})", size, pre.get("mean", OPENAI_MEAN),
                   pre.get("std", OPENAI_STD), open_clip.get_tokenizer(arch), device)

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

    def zero_shot(self, image_emb: torch.Tensor, domain: Domain, photo_phrase: str = "Photo"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(theme index, object index) per image: softmax over the prompt grid, marginalised per axis."""
        text = self.encode_texts(grid_prompts(domain, photo_phrase))
        scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0
        p = (scale * image_emb @ text.T).softmax(-1).view(-1, len(domain.themes), len(domain.objects))
        return p.sum(2).argmax(1), p.sum(1).argmax(1)

    @staticmethod
    def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Per-pair CLIP score, 100 * max(cos, 0), as torchmetrics' CLIPScore defines it."""
        return (100 * (image_emb * text_emb).sum(-1)).clamp(min=0)


# --------------------------------------------------------------------------- recipe
@dataclass
class ClipRecipe:
    steps: int = 1000
    batch: int = 96
    lr: float = 2e-3
    seed: int = 0
    data_seed: int = 3000  # MiniCanvas seed of the training renders
    per_cell: int = 40
    test_seed: int = 9100  # held-out renders for the reported zero-shot accuracy
    test_per_cell: int = 8


def _label_prompts(domain: Domain) -> tuple[list[str], list[str], list[str]]:
    full = grid_prompts(domain)
    styles = [f"An image in {style_phrase(domain, t)} style." for t in domain.themes]
    objects = [f"A {o} image." for o in domain.objects]
    return full, styles, objects


def train_clip(out: str | Path, recipe: ClipRecipe = ClipRecipe(), progress: bool = True,
               model_cfg: dict | None = None) -> dict:
    """Train the MiniCanvas CLIP and write it atomically to ``out``; returns its held-out accuracy.

    Every step contrasts a batch of augmented renders with the full caption grid plus style-only
    and object-only captions (no in-batch false negatives, since the caption set is small and
    complete), so both the grid zero-shot and free-form prompts are meaningful.
    """
    import open_clip

    from benchmarks.unlearncanvas.classifier import augment, render_tensors

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    domain = minicanvas.DOMAIN
    x, ys, yo = render_tensors(recipe.per_cell, recipe.data_seed)
    model_cfg = model_cfg or tiny_model_config()
    model = build_model(model_cfg)
    full, styles, objects = _label_prompts(domain)
    tokens = open_clip.tokenize(full + styles + objects)
    n_full, n_style = len(full), len(styles)
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    n_obj = len(domain.objects)
    t0 = time.time()
    model.train()
    bar = tqdm(range(recipe.steps), desc="minicanvas-clip", mininterval=10, file=sys.stdout, disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(x), (recipe.batch,), generator=gen)
        img = F.normalize(model.encode_image((augment(x[idx], gen) - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        cell = ys[idx] * n_obj + yo[idx]
        loss = (F.cross_entropy(logits[:, :n_full], cell)
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
    scorer = ClipScorer(model, "minicanvas-clip", 32, OPENAI_MEAN, OPENAI_STD, open_clip.tokenize)
    tx, tys, tyo = render_tensors(recipe.test_per_cell, recipe.test_seed)
    emb = scorer.encode_images(tx)
    ps, po = scorer.zero_shot(emb, domain)
    held_out = {"seed": recipe.test_seed, "per_cell": recipe.test_per_cell, "images": len(tx),
                "zero_shot_style_accuracy": round((ps == tys).float().mean().item(), 4),
                "zero_shot_object_accuracy": round((po == tyo).float().mean().item(), 4),
                "zero_shot": "softmax over the 110-prompt grid, marginalised per axis"}
    config = {"model_cfg": model_cfg, "preprocess": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "size": 32},
              "tokenizer": "open_clip.tokenize (CLIP BPE, context 77)",
              "recipe": {**recipe.__dict__, "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()},
              "held_out": held_out,
              "parameters": sum(p.numel() for p in model.parameters())}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
    (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    for p in [tmp, *tmp.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    if out.exists():
        for f in (WEIGHTS, CONFIG):
            (out / f).unlink(missing_ok=True)
        out.rmdir()
    tmp.rename(out)
    return held_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the tiny MiniCanvas open_clip model.")
    parser.add_argument("--out", default=str(SHIPPED_DIR))
    parser.add_argument("--steps", type=int, default=ClipRecipe.steps)
    parser.add_argument("--batch", type=int, default=ClipRecipe.batch)
    parser.add_argument("--per-cell", type=int, default=ClipRecipe.per_cell)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 2 or args.per_cell < 1:
        print("error: --steps, --per-cell must be positive and --batch at least 2", file=sys.stderr)
        return 2
    held = train_clip(args.out, ClipRecipe(steps=args.steps, batch=args.batch, per_cell=args.per_cell, seed=args.seed))
    print(f"held-out zero-shot accuracy: style {held['zero_shot_style_accuracy']:.4f}, "
          f"object {held['zero_shot_object_accuracy']:.4f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
