"""The feature test of feature unlearning (Moon et al., AAAI 2024): a latent direction, a threshold, a landing point.

Labelled latents define u = (mean z+ - mean z-) / ||.|| and a threshold t on the projection z.u
(shared/reference/gan_vae.md, "ref", section 3). Latents with z.u >= t are *flagged*; the method
teaches the generator to draw, for a flagged z, what the original draws at z moved back along u.
The paper moves it onto t. Where the feature is only partly linear, images at t still show it often
enough to cap the cut (the *shift ceiling*, ref section 4: digits-GAN digit 7 keeps 1.64 % of 7.02 %,
a 77 % cut at most); ``margin`` moves flagged latents that many standard deviations of the feedback
projections past t instead (0 = the paper). It changes where flagged latents land, not which are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.methods.config import MethodConfigError

THRESHOLDS = ("midpoint", "pooled")


class FeedbackError(MethodConfigError):
    """Labels that cannot define a feature (no positives, bad file, wrong latent size); one line."""


@dataclass
class Direction:
    """Unit direction u, its raw length, threshold t, and where shifted latents land (t - margin x spread)."""

    u: torch.Tensor
    norm: float
    threshold: float
    auc: float
    positives: int
    negatives: int
    mode: str
    spread: float = 1.0  # standard deviation of the feedback latents' projections
    margin: float = 0.0  # in units of ``spread``; 0: the paper's landing on t

    @property
    def landing(self) -> float:
        return self.threshold - self.margin * self.spread

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.u.to(z)

    def flagged(self, z: torch.Tensor) -> torch.Tensor:
        return self.project(z) >= self.threshold

    def shift(self, z: torch.Tensor, step: str = "unit") -> torch.Tensor:
        """z_hat = z - (proj(z) - landing) * u; with ``step="raw"`` the paper's unnormalised z_e (over/undershoots)."""
        vec = self.u.to(z) * (self.norm if step == "raw" else 1.0)
        return z - (self.project(z) - self.landing)[:, None] * vec

    def to_json(self) -> dict:
        return {"u": [round(float(v), 6) for v in self.u], "norm": round(self.norm, 6), "threshold": self.threshold,
                "auc": round(self.auc, 4), "positives": self.positives, "negatives": self.negatives,
                "threshold_mode": self.mode, "spread": round(self.spread, 6), "margin": self.margin,
                "landing": self.landing}

    @classmethod
    def from_json(cls, d: dict) -> "Direction":
        """The direction an artifact's ``run.direction`` records (older records: no margin, spread 1)."""
        return cls(torch.tensor(d["u"]), d["norm"], d["threshold"], d["auc"], d["positives"], d["negatives"],
                   d["threshold_mode"], d.get("spread", 1.0), d.get("margin", 0.0))


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties counted half)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(greater / (len(pos) * len(neg)))


def fit_direction(latents: torch.Tensor, labels: torch.Tensor, mode: str = "midpoint",
                  margin: float = 0.0) -> Direction:
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
    spread = float(p.std()) if len(p) > 1 else 1.0
    return Direction(u.float(), norm, t, auc(p, labels), n_pos, n_neg, mode, spread, float(margin))
