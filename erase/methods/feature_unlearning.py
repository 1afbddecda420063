"""Feature unlearning for pre-trained GANs and VAEs (Moon, Cho, Kim, AAAI 2024, arXiv 2303.05699).

A user marks which of N seeded generated samples show a feature (or a classifier stands in for
the user). Latents are known for generated samples, so the feature becomes a latent direction
u = (mean z+ - mean z-) / ||.|| and a threshold t on the projection z.u. The generator g, a copy
of the frozen original f, is fine-tuned on prior samples only (no training data):

    flagged (z.u >= t):   g(z) -> f(z_hat),  z_hat = z - (z.u - t) u   L1 + (1 - SSIM), weight alpha
    unflagged:            g(z) -> f(z)                                L1

Re-implementer's choices follow shared/reference/gan_vae.md ("ref"): threshold midpoint of the
two class means (ref section 3; "pooled" = the paper's literal formula), unit step, per-image mean
L1, single-scale SSIM with a 3x3 window for small images, and a pre-check that warns when the
projection separates the labels poorly (AUC < 0.75, ref section 6): the method is bounded by
linear separability, which is why digit 8 fails (ref section 5).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from erase.methods.base import Method, MethodConfigError, option

THRESHOLDS = ("midpoint", "pooled")
STEPS = ("unit", "raw")


class FeedbackError(MethodConfigError):
    """Labels that cannot define a feature (no positives, bad file, wrong latent size); one line."""


@dataclass
class FeatureUnlearningConfig:
    threshold: str = option("midpoint", "t: midpoint of the class-mean projections, or pooled mean of all",
                            "ref section 3 (paper formula = pooled; midpoint recommended)")
    step: str = option("unit", "shift along the unit direction (lands on t) or the raw z_e (paper as printed)",
                       "ref section 3")
    alpha: float = option(1.0, "weight of the unlearning + perceptual terms", "ref section 5 (alpha = 1)")
    steps: int = option(3000, "optimizer steps", "ref section 5 (3,000 steps on digits)")
    batch_size: int = option(256, "prior latents per step", "ref section 5")
    lr: float = option(1e-3, "Adam learning rate", "ref section 3 (1e-3 for toy generators)")
    ssim_window: int = option(3, "window of the single-scale SSIM (images < 160 px)", "ref section 3")
    feedback: int = option(1000, "samples the classifier labels when it stands in for the user",
                           "ref section 3: 500-2,000 (paper user study: 500); 500 gave a noisier digit-7 direction")
    feedback_seed: int = option(0, "seed of the labelled samples (latent i = default_rng([seed, i]))", "")
    min_auc: float = option(0.75, "warn 'not linearly editable' below this projection AUC", "ref section 6")
    labels: str = option("", "JSON labels file marking which seeded samples show the feature", "")
    classifier: str = option("", "stand-in user when no labels file: digits or minicanvas "
                             "(empty: the generator's dataset)", "")


@dataclass
class Direction:
    """The feature test of the paper: unit direction u, its raw length, and threshold t."""

    u: torch.Tensor
    norm: float
    threshold: float
    auc: float
    positives: int
    negatives: int
    mode: str

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.u.to(z)

    def flagged(self, z: torch.Tensor) -> torch.Tensor:
        return self.project(z) >= self.threshold

    def shift(self, z: torch.Tensor, step: str = "unit") -> torch.Tensor:
        """z_hat = z - (proj(z) - t) * u; with ``step="raw"`` the paper's unnormalised z_e (over/undershoots)."""
        vec = self.u.to(z) * (self.norm if step == "raw" else 1.0)
        return z - (self.project(z) - self.threshold)[:, None] * vec

    def to_json(self) -> dict:
        return {"u": [round(float(v), 6) for v in self.u], "norm": round(self.norm, 6), "threshold": self.threshold,
                "auc": round(self.auc, 4), "positives": self.positives, "negatives": self.negatives,
                "threshold_mode": self.mode}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties counted half)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(greater / (len(pos) * len(neg)))


def fit_direction(latents: torch.Tensor, labels: torch.Tensor, mode: str = "midpoint") -> Direction:
    """Direction and threshold from labelled latents (paper: DCGAN latent arithmetic, projection test)."""
    labels = labels.bool()
    if mode not in THRESHOLDS:
        raise MethodConfigError(f"threshold must be one of {', '.join(THRESHOLDS)}, got {mode!r}")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise FeedbackError(f"the labels mark {n_pos} positive and {n_neg} negative samples; "
                            "the feature direction needs at least one of each")
    latents = latents.double()
    d = latents[labels].mean(0) - latents[~labels].mean(0)
    norm = float(d.norm())
    if norm == 0:
        raise FeedbackError("positive and negative latents have the same mean; no direction")
    u = d / norm
    p = latents @ u
    t = float(p.mean()) if mode == "pooled" else float((p[labels].mean() + p[~labels].mean()) / 2)
    return Direction(u.float(), norm, t, auc(p, labels), n_pos, n_neg, mode)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 3, sigma: float = 1.5) -> torch.Tensor:
    """Per-image single-scale SSIM (Wang et al. 2004) for images in [0, 1], Gaussian window, no padding."""
    c = x.shape[1]
    r = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = (torch.outer(g, g) / g.sum() ** 2).expand(c, 1, window, window)
    blur = lambda t: F.conv2d(t, k, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return m.mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- feedback
def read_labels(path: str | Path, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and labels from a hand-written JSON file.

    ``{"seed": 0, "count": 200, "positive": [3, 17, ...]}`` marks samples 3, 17, ... of the
    numbered contact sheet (``python -m pipelines.generators sample``) as showing the feature and
    every other one as free of it; an optional ``"negative"`` list restricts the negatives to those
    marked. An optional ``"latent_dim"`` is checked against the generator.
    """
    from pipelines.generators import seeded_latents

    path = Path(path)
    if not path.is_file():
        raise FeedbackError(f"labels file {path} does not exist")
    try:
        spec = json.loads(path.read_text())
    except ValueError as err:
        raise FeedbackError(f"labels file {path} is not valid JSON: {err}") from err
    if not isinstance(spec, dict) or "positive" not in spec or "count" not in spec:
        raise FeedbackError(f"labels file {path} needs an object with 'count' and 'positive' (and 'seed')")
    seed, count = spec.get("seed", 0), spec["count"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seed, count)) or count < 1:
        raise FeedbackError(f"labels file {path}: 'seed' and 'count' must be integers, count >= 1")
    if "latent_dim" in spec and spec["latent_dim"] != latent_dim:
        raise FeedbackError(f"labels file {path} was made for latent size {spec['latent_dim']}, "
                            f"but the generator's latent size is {latent_dim}")
    marked = {}
    for key in ("positive", "negative"):
        items = spec.get(key)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise FeedbackError(f"labels file {path}: {key!r} must be a list of sample indices")
        bad = [i for i in items if not 0 <= i < count]
        if bad:
            raise FeedbackError(f"labels file {path}: {key} index {bad[0]} outside 0..{count - 1}")
        marked[key] = set(items)
    pos, neg = marked["positive"], marked.get("negative", set(range(count)) - marked["positive"])
    if pos & neg:
        raise FeedbackError(f"labels file {path}: sample {min(pos & neg)} is marked both positive and negative")
    if not pos or not neg:
        raise FeedbackError(f"labels file {path} marks {len(pos)} positive and {len(neg)} negative samples; "
                            "the feature direction needs at least one of each")
    index = sorted(pos | neg)
    z = seeded_latents(seed, count, latent_dim)[index]
    return z, torch.tensor([i in pos for i in index])


class Judge:
    """A classifier standing in for the user: which images show ``feature``, plus features for FD_clf."""

    def __init__(self, classifier: str, feature: str):
        key = feature.strip().lower().removeprefix("digit").strip()
        if classifier == "digits":
            from benchmarks.digits import CLASSES, DigitsClassifier
            if key not in CLASSES:
                raise MethodConfigError(f"digits feature must be a digit 0-9, got {feature!r}")
            self.model, self.head, self.index, self.names = DigitsClassifier.from_pretrained(), "digit", int(key), CLASSES
        elif classifier == "minicanvas":
            from benchmarks.unlearncanvas.classifier import MiniCanvasClassifier
            from benchmarks.unlearncanvas.minicanvas import DOMAIN
            try:
                name = DOMAIN.canonical(feature)
            except ValueError as err:
                raise MethodConfigError(f"{err} (themes: {', '.join(DOMAIN.themes)}; objects: "
                                        f"{', '.join(DOMAIN.objects)})") from None
            self.model = MiniCanvasClassifier.from_pretrained()
            self.head = "theme" if name in DOMAIN.themes else "object"
            self.names = DOMAIN.themes if self.head == "theme" else DOMAIN.objects
            self.index = self.names.index(name)
        else:
            raise MethodConfigError(f"unknown classifier {classifier!r}; known: digits, minicanvas")
        self.classifier, self.feature = classifier, self.names[self.index]

    @torch.no_grad()
    def classes(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class of the judged head (digit, theme or object) per image."""
        if self.classifier == "digits":
            return self.model.predict(images)
        themes, objects = self.model.predict(images)
        return themes if self.head == "theme" else objects

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.classes(images) == self.index

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate classifier activations (the feature space of FD_clf)."""
        if self.classifier == "digits":
            return self.model.embed(images)
        m, out = self.model.eval(), []
        for i in range(0, len(images), batch_size):
            x = F.interpolate(images[i:i + batch_size].float(), size=(m.image_size,) * 2, mode="bilinear",
                              antialias=True, align_corners=False)
            out.append(m.features(x * 2 - 1))
        return torch.cat(out)


def classifier_labels(artifact, judge: Callable[[torch.Tensor], torch.Tensor], count: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated user: label ``count`` seeded samples of the original generator with ``judge``."""
    from pipelines.generators import seeded_latents

    z = seeded_latents(seed, count, artifact.latent_dim)
    return z, judge(artifact.generate(z)).cpu()


# --------------------------------------------------------------------------- the method
class FeatureUnlearning(Method):
    """``model`` is a ``pipelines.generators.GeneratorArtifact``; only its sampler (decoder/generator) trains."""

    name = "feature-unlearning"
    Config = FeatureUnlearningConfig
    summary = "distil a GAN/VAE so latents on the feature side of a latent direction map to feature-free images"
    embedded_preset: dict = {}

    def setup(self, generator: torch.Generator) -> None:
        cfg = self.config
        if cfg.threshold not in THRESHOLDS or cfg.step not in STEPS:
            raise MethodConfigError(f"threshold must be {'/'.join(THRESHOLDS)} and step {'/'.join(STEPS)}")
        if cfg.labels:
            z, y = read_labels(cfg.labels, self.model.latent_dim)
            self.feedback_source = f"labels file {cfg.labels}"
        else:
            judge = Judge(cfg.classifier or self.model.dataset, self.concept)
            z, y = classifier_labels(self.model, judge, cfg.feedback, cfg.feedback_seed)
            self.feedback_source = f"{judge.classifier} classifier, {judge.head} {judge.feature!r}, " \
                                   f"{cfg.feedback} samples of seed {cfg.feedback_seed}"
        self.direction = fit_direction(z, y, cfg.threshold)
        self.ceiling = None
        if not cfg.labels:  # free pre-check (ref section 5, finding 1): does f(z_hat) still show the feature?
            d = self.direction
            flagged = d.flagged(z)
            shifted = torch.where(flagged[:, None], d.shift(z, cfg.step), z)
            self.ceiling = {"feedback_share": round(float(y.float().mean()), 4),
                            "shifted_share": round(float(judge(self.model.generate(shifted)).float().mean()), 4)}
        if self.direction.auc < cfg.min_auc:
            warnings.warn(f"feature {self.concept!r} is not linearly editable in this latent space: projection "
                          f"AUC {self.direction.auc:.3f} < {cfg.min_auc}; expect little removal at a quality cost",
                          stacklevel=2)
        self.student = self.model.sampler().to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.student.eval()  # BatchNorm keeps the original's statistics; gradients still flow
        self.edited = self.seen = 0

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        comp = self.component_name()
        return {f"{comp}.{n}": p.requires_grad_(True) for n, p in self.student.named_parameters()}

    def component_name(self) -> str:
        return "decoder" if self.model.config.get("kind") == "vae" else "generator"

    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        cfg, d = self.config, self.direction
        z = torch.randn(cfg.batch_size, self.model.latent_dim, generator=generator).to(self.device)
        flagged = d.flagged(z)
        with torch.no_grad():
            target = self.teacher(torch.where(flagged[:, None], d.shift(z, cfg.step), z))
        x = self.student(z)
        l1 = (x - target).abs().mean(dim=(1, 2, 3))
        s = flagged.float()
        self.edited, self.seen = self.edited + int(flagged.sum()), self.seen + len(z)
        unlearn = (s * (l1 + 1 - ssim(x, target, cfg.ssim_window))).mean()
        return cfg.alpha * unlearn + ((1 - s) * l1).mean()

    def changed_components(self) -> dict[str, nn.Module]:
        return {self.component_name(): self.student}

    def metadata(self) -> dict:
        return {"feedback": self.feedback_source, "direction": self.direction.to_json(),
                "shift_ceiling_on_feedback": self.ceiling,
                "edited_fraction": round(self.edited / max(self.seen, 1), 4)}


# --------------------------------------------------------------------------- running and saving
def unlearn_feature(artifact, feature: str, labels: str | Path | None = None, classifier: str | None = None,
                    config: FeatureUnlearningConfig | None = None, seed: int = 0, progress: bool = False,
                    work_dir: str | Path | None = None, resume: bool = False):
    """Unlearn ``feature`` from a ``GeneratorArtifact``; returns (new artifact, erase.json metadata).

    The base artifact is never changed (its model is copied). Runs the shared trainer
    (``erase.trainer.run_method``): Adam, per-step seeded latents, checkpoints in ``work_dir``.
    """
    from erase.trainer import TrainerConfig, run_method
    from pipelines.generators import GeneratorArtifact

    cfg = copy.deepcopy(config or FeatureUnlearningConfig())
    cfg.labels = str(labels) if labels else cfg.labels
    cfg.classifier = classifier or cfg.classifier
    model = copy.deepcopy(artifact.model)
    work = GeneratorArtifact(model, dict(artifact.config), artifact.path)
    method = FeatureUnlearning(cfg, feature, "feature", work)
    tcfg = TrainerConfig(steps=cfg.steps, seed=seed, checkpoint_every=100 if work_dir else 0, progress=progress,
                         cpu=not torch.cuda.is_available())
    result = run_method(method, tcfg, work_dir, resume, fingerprint={"method": method.name, "feature": feature,
                                                                     "config": dataclasses.asdict(cfg)})
    model.eval()
    meta = {"method": method.name, "feature": feature, "config": dataclasses.asdict(cfg), "seed": seed,
            **method.metadata(),
            "base": {"path": str(artifact.path) if artifact.path else None,
                     "sha256_16": _hash_or_none(artifact.path)},
            "training": {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                         "peak_memory_bytes": result.peak_memory_bytes, "peak_memory_kind": result.peak_memory_kind,
                         "hardware": f"{platform.machine()} {'CUDA' if torch.cuda.is_available() else 'CPU'}, "
                                     f"torch threads {torch.get_num_threads()}"}}
    config_out = dict(artifact.config, unlearned={"method": method.name, "feature": feature})
    return GeneratorArtifact(model, config_out, None), meta


def _hash_or_none(path) -> str | None:
    from pipelines.generators import WEIGHTS, weights_hash

    return weights_hash(path) if path is not None and (Path(path) / WEIGHTS).is_file() else None


def save_unlearned(out: str | Path, artifact, meta: dict) -> Path:
    """Write the unlearned generator as a generator artifact plus ``erase.json`` (atomic)."""
    from pipelines.generators import ERASE_JSON, save_generator

    artifact.path = save_generator(out, artifact.model, artifact.config, {ERASE_JSON: meta})
    return artifact.path


def erase_feature(model: str | Path, feature: str, output: str | Path, labels: str | Path | None = None,
                  classifier: str | None = None, options: dict | None = None, steps: int | None = None,
                  seed: int = 0, overwrite: bool = False, resume: bool = False, progress: bool = True
                  ) -> tuple[Path, dict]:
    """Load a generator artifact, unlearn ``feature``, save the new artifact; what ``erase-concept`` calls.

    Bad input raises ``FeedbackError`` / ``MethodConfigError`` / ``GeneratorError`` (a ``CheckpointError``)
    before anything is written; the output appears only when complete (temp folder + rename).
    A checkpoint in ``.<output>.work`` lets ``resume`` continue a killed run.
    """
    import shutil

    from erase.methods.base import build_config
    from pipelines.generators import load_generator

    if not model:
        raise FeedbackError("feature unlearning needs --model: a generator artifact folder or a shipped name "
                            "(digits-vae, minicanvas-vae, ...)")
    out = Path(output)
    if out.exists() and not overwrite:
        raise FeedbackError(f"output {out} exists; pass --overwrite to replace it")
    if not str(feature).strip():
        raise FeedbackError("the feature name is empty; give --feature NAME")
    cfg = build_config(FeatureUnlearningConfig, options or {}, {"steps": steps} if steps is not None else {})
    base = load_generator(model)
    work = out.parent / f".{out.name}.work"
    if overwrite and not resume and work.exists():
        shutil.rmtree(work)
    new, meta = unlearn_feature(base, feature, labels, classifier, cfg, seed, progress, work, resume)
    save_unlearned(out, new, meta)
    shutil.rmtree(work, ignore_errors=True)
    return out, meta


def main(argv: list[str] | None = None) -> int:
    """``python -m erase.methods.feature_unlearning`` (what ``erase-concept --method feature-unlearning`` runs)."""
    import argparse
    import sys

    from erase.checkpoint import CheckpointError
    from erase.methods.base import describe_config

    parser = argparse.ArgumentParser(description="Unlearn a feature from a GAN/VAE generator artifact.",
                                     epilog="options (--set key=value):\n" + "\n".join(describe_config(
                                         FeatureUnlearningConfig)), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="generator artifact folder or shipped name (digits-vae ...)")
    parser.add_argument("--feature", required=True, help="feature name (a class of the classifier, e.g. 7 or Fire)")
    parser.add_argument("--labels", help="JSON labels file of seeded samples (see README.md, Feature unlearning)")
    parser.add_argument("--classifier", help="stand-in user: digits or minicanvas (default: the model's dataset)")
    parser.add_argument("--out", required=True, help="output artifact folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method option")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        pairs = [s.split("=", 1) for s in args.set]
        if any(len(p) != 2 for p in pairs):
            raise MethodConfigError("--set expects KEY=VALUE")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, meta = erase_feature(args.model, args.feature, args.out, args.labels, args.classifier, dict(pairs),
                                      args.steps, args.seed, args.overwrite, args.resume)
        for w in caught:
            if "not linearly editable" in str(w.message):
                print(f"warning: {w.message}", file=sys.stderr)
    except (MethodConfigError, CheckpointError) as err:  # FeedbackError and GeneratorError are among these
        print(f"error: {err}", file=sys.stderr)
        return 2
    d = meta["direction"]
    print(f"unlearned {args.feature!r}: direction AUC {d['auc']}, {d['positives']}+/{d['negatives']}- feedback, "
          f"edited {meta['edited_fraction']:.1%} of latents, {meta['training']['seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
