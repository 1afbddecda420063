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
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from erase.concepts import MINICANVAS, ConceptError
from erase.methods.base import GradientMethod
from erase.methods.config import MethodConfigError, option
from erase.methods.latent_direction import THRESHOLDS, FeedbackError, fit_direction
from pipelines.generators import seeded_latents
from pipelines.judges import DigitsClassifier, MiniCanvasClassifier

STEPS = ("unit", "raw")


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
    margin: float = option(0.0, "flagged latents land this many standard deviations of the feedback projections "
                           "past t (0: on t, the paper)", "erase/methods/latent_direction.py: lowers the shift ceiling")
    min_auc: float = option(0.75, "warn 'not linearly editable' below this projection AUC", "ref section 6")
    labels: str = option("", "JSON labels file marking which seeded samples show the feature", "")
    classifier: str = option("", "stand-in user when no labels file: digits or minicanvas "
                             "(empty: the generator's dataset)", "")


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
            names = DigitsClassifier.classes
            if key not in names:
                raise MethodConfigError(f"digits feature must be a digit 0-9, got {feature!r}")
            self.model, self.head, self.index, self.names = DigitsClassifier.from_pretrained(), "digit", int(key), names
        elif classifier == "minicanvas":
            domain = MINICANVAS
            try:
                name = domain.canonical(feature)
            except ConceptError as err:
                raise MethodConfigError(f"{err} (themes: {', '.join(domain.themes)}; objects: "
                                        f"{', '.join(domain.objects)})") from None
            self.model = MiniCanvasClassifier.from_pretrained()
            self.head = "theme" if name in domain.themes else "object"
            self.names = domain.themes if self.head == "theme" else domain.objects
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

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate classifier activations (the feature space of FD_clf)."""
        return self.model.embed(images)


def classifier_labels(artifact, judge: Callable[[torch.Tensor], torch.Tensor], count: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated user: label ``count`` seeded samples of the original generator with ``judge``."""
    z = seeded_latents(seed, count, artifact.latent_dim)
    return z, judge(artifact.generate(z)).cpu()


# --------------------------------------------------------------------------- the method
class FeatureUnlearning(GradientMethod):
    """``model`` is a ``pipelines.generators.GeneratorArtifact``; only its sampler (decoder/generator) trains."""

    name = "feature-unlearning"
    Config = FeatureUnlearningConfig
    summary = "distil a GAN/VAE so latents on the feature side of a latent direction map to feature-free images"
    model_type = "generator"

    @classmethod
    def validate(cls, config: FeatureUnlearningConfig, concept) -> None:
        super().validate(config, concept)
        if config.threshold not in THRESHOLDS or config.step not in STEPS:
            raise MethodConfigError(f"threshold must be {'/'.join(THRESHOLDS)} and step {'/'.join(STEPS)}, got "
                                    f"{config.threshold!r} and {config.step!r}")
        if config.feedback < 2 or config.ssim_window < 1 or config.alpha < 0 or not 0 <= config.margin <= 3:
            raise MethodConfigError("feedback must be >= 2, ssim_window >= 1, alpha >= 0 and margin 0..3")
        if config.classifier not in ("", "digits", "minicanvas"):
            raise MethodConfigError(f"unknown classifier {config.classifier!r}; known: digits, minicanvas")

    def setup(self, generator: torch.Generator) -> None:
        cfg, feature = self.config, self.concept.text
        if cfg.labels:
            z, y = read_labels(cfg.labels, self.model.latent_dim)
            self.feedback_source = f"labels file {Path(cfg.labels).name}"
        else:
            judge = Judge(cfg.classifier or self.model.dataset, feature)
            z, y = classifier_labels(self.model, judge, cfg.feedback, cfg.feedback_seed)
            self.feedback_source = f"{judge.classifier} classifier, {judge.head} {judge.feature!r}, " \
                                   f"{cfg.feedback} samples of seed {cfg.feedback_seed}"
        self.direction = fit_direction(z, y, cfg.threshold, cfg.margin)
        self.ceiling = None
        if not cfg.labels:  # free pre-check (ref section 5, finding 1): does f(z_hat) still show the feature?
            d = self.direction
            flagged = d.flagged(z)
            shifted = torch.where(flagged[:, None], d.shift(z, cfg.step), z)
            self.ceiling = {"feedback_share": round(float(y.float().mean()), 4),
                            "shifted_share": round(float(judge(self.model.generate(shifted)).float().mean()), 4)}
        if self.direction.auc < cfg.min_auc:
            warnings.warn(f"feature {feature!r} is not linearly editable in this latent space: projection "
                          f"AUC {self.direction.auc:.3f} < {cfg.min_auc}; expect little removal at a quality cost",
                          stacklevel=2)
        self.student = self.model.sampler().to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.student.eval()  # BatchNorm keeps the original's statistics; gradients still flow
        self.counts = torch.zeros(2, dtype=torch.int64)  # latents edited, latents seen (checkpointed)

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
        self.counts += torch.tensor([int(flagged.sum()), len(z)])
        unlearn = (s * (l1 + 1 - ssim(x, target, cfg.ssim_window))).mean()
        return cfg.alpha * unlearn + ((1 - s) * l1).mean()

    def changed_components(self) -> dict[str, nn.Module]:
        return {self.component_name(): self.student}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.counts = tensors["counts"].clone()

    def run_info(self) -> dict:
        edited, seen = self.counts.tolist()
        return {"feedback": self.feedback_source, "direction": self.direction.to_json(),
                "shift_ceiling_on_feedback": self.ceiling, "edited_fraction": round(edited / max(seen, 1), 4)}
