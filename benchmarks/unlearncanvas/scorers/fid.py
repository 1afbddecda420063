"""Frechet distances between an answer set and the protocol's reference set.

Two feature spaces, chosen explicitly and always named in the report:

* ``InceptionFeatures``: torchmetrics' FID Inception-v3 (2048-d pool features), built from the
  weights file the user gives (``feature_extractor_weights_path``); needs ``torch-fidelity``.
* ``ClipFeatures``: the unit-norm image embeddings of a ``ClipScorer`` (the embedded MiniCanvas
  CLIP offline, or any open_clip model). Its numbers are a Frechet *CLIP* distance and are not
  comparable with published Inception FIDs; the report says so.

``CellFrechetDistance`` keeps, per side (reference and generated), the sufficient statistics of a
Gaussian fit -- image count, sum of features, sum of outer products, in float64 as torchmetrics'
``FrechetInceptionDistance`` does -- per (theme, object) cell, so the distance with an erased
target's cells left out (on both sides) is a sum over the kept cells. Where one slot per cell
would not fit ``CELL_STATE_BUDGET`` (Inception's 2048-d on the 1020 UnlearnCanvas cells would need
68 GB) it keeps one slot for all cells plus one per target and answers "all cells" and "all but
one target". ``frechet_distance`` (torchmetrics on two feature sets) is the reference the
per-cell path is tested against. Nothing falls back silently: missing weights or a missing
package raise ``FIDError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric

from benchmarks.unlearncanvas.scorers.cells import cell_index

CELL_STATE_BUDGET = 256 * 2**20  # bytes of per-cell float64 second moments, both sides, before the target layout


class FIDError(ValueError):
    """The requested FID features cannot be built, or a distance cannot be taken; one line for the user."""


class _StoredFeatures(nn.Module):
    """Identity 'feature extractor' so torchmetrics accumulates features computed beforehand."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D), via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise FIDError(f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise FIDError(f"a Frechet distance needs at least 2 images per set, got {len(real)} reference "
                       f"and {len(fake)} generated")
    metric = FrechetInceptionDistance(feature=_StoredFeatures(real.shape[1]), reset_real_features=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def frechet_from_moments(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), the trace of the root from the eigenvalues of S1 S2."""
    a = (mu1 - mu2).square().sum()
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(a + b - 2 * c)


class CellFrechetDistance(Metric):
    """Frechet distance with per-cell statistics: ``update(features, themes, objects, real)``.

    ``layout="cells"``: one slot per cell, any union of cells can be measured. ``layout="targets"``
    with ``targets`` ((rows, cols) bool masks): slot 0 holds every cell, slot i the cells of target
    i; "all cells" and "all but target i" can be measured. ``compute()`` is the distance over all
    cells; ``distance(keep)`` over the kept cells on both sides.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, rows: int, cols: int, dim: int, layout: str = "cells",
                 targets: Sequence[np.ndarray] = (), **kwargs):
        super().__init__(**kwargs)
        self.rows, self.cols, self.dim, self.layout = int(rows), int(cols), int(dim), layout
        if layout == "cells":
            member = torch.eye(rows * cols, dtype=torch.bool)
        elif layout == "targets":
            masks = [torch.as_tensor(np.asarray(m, dtype=bool)).flatten() for m in targets]
            if any(len(m) != rows * cols for m in masks):
                raise FIDError(f"target masks must cover the {rows}x{cols} grid")
            member = torch.stack([torch.ones(rows * cols, dtype=torch.bool), *masks])
        else:
            raise FIDError(f"layout must be 'cells' or 'targets', got {layout!r}")
        self.membership = member  # (slots, cells): which slots an image of a cell adds to
        slots = len(member)
        for side in ("real", "fake"):
            self.add_state(f"{side}_count", default=torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", default=torch.zeros(slots, dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", default=torch.zeros(slots, dim, dim, dtype=torch.float64),
                           dist_reduce_fx="sum")

    @staticmethod
    def state_bytes(rows: int, cols: int, dim: int) -> int:
        """Bytes of the per-cell second moments of both sides (the ``cells`` layout)."""
        return 2 * rows * cols * dim * dim * 8

    def update(self, features: torch.Tensor, themes: torch.Tensor, objects: torch.Tensor, real: bool) -> None:
        side = "real" if real else "fake"
        count, total, outer = (getattr(self, f"{side}_{k}") for k in ("count", "sum", "outer"))
        f = torch.as_tensor(features).double().to(total.device)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise FIDError(f"features must be (N, {self.dim}), got {tuple(f.shape)}")
        cell = cell_index(themes, objects, self.rows, self.cols)
        if len(cell) != len(f):
            raise FIDError(f"{len(f)} feature rows for {len(cell)} labelled images")
        if self.layout == "cells":  # one slot per image: one matmul per chunk over the cells present
            step = max(1, int((2**23 / self.dim) ** 0.5))  # chunk x cells x dim float64 stays under 64 MB
            for i in range(0, len(f), step):
                cells, inverse = cell[i:i + step].unique(return_inverse=True)
                fc = f[i:i + step]
                onehot = torch.nn.functional.one_hot(inverse, len(cells)).to(f)  # (n, cells present)
                weighted = (onehot[:, :, None] * fc[:, None, :]).reshape(len(fc), -1)  # (n, cells * dim)
                cells = cells.to(total.device)
                count[cells] += onehot.sum(0).long()
                total[cells] += onehot.T @ fc
                outer[cells] += (weighted.T @ fc).view(len(cells), self.dim, self.dim)
            return
        member = self.membership[:, cell].to(total.device)  # (slots, N)
        for slot in member.any(1).nonzero().flatten().tolist():
            fs = f[member[slot]]
            count[slot] += len(fs)
            total[slot] += fs.sum(0)
            outer[slot] += fs.T @ fs

    def _coefficients(self, keep: torch.Tensor) -> torch.Tensor:
        """Slot weights whose sum is the kept cells' statistics."""
        if self.layout == "cells":
            return keep.flatten().double()
        coef = torch.zeros(len(self.membership), dtype=torch.float64)
        coef[0] = 1.0
        if bool(keep.all()):
            return coef
        for slot in range(1, len(self.membership)):
            if torch.equal(self.membership[slot], ~keep.flatten()):
                coef[slot] = -1.0
                return coef
        raise FIDError("this FID state (one slot per target) measures all cells or all but one target only")

    def _moments(self, side: str, coef: torch.Tensor, states: dict) -> tuple[int, torch.Tensor, torch.Tensor]:
        n = int((coef * states[f"{side}_count"].double()).sum().round())
        if n < 2:
            name = "reference" if side == "real" else "generated"
            raise FIDError(f"a Frechet distance needs at least 2 images per set, got {n} {name} in the kept cells")
        total = torch.einsum("s,sd->d", coef, states[f"{side}_sum"])
        outer = torch.einsum("s,sde->de", coef, states[f"{side}_outer"])
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return n, mean, cov

    def distance(self, keep: np.ndarray | torch.Tensor | None = None) -> tuple[float, int, int]:
        """(distance, generated images, reference images) over the kept cells ((rows, cols) bool; None = all)."""
        keep = torch.ones(self.rows, self.cols, dtype=torch.bool) if keep is None else torch.as_tensor(keep).bool()
        coef = self._coefficients(keep)
        with self.sync_context():
            states = {k: v.detach().cpu() for k, v in self.metric_state.items()}
        n_real, mu_real, cov_real = self._moments("real", coef, states)
        n_fake, mu_fake, cov_fake = self._moments("fake", coef, states)
        return frechet_from_moments(mu_real, cov_real, mu_fake, cov_fake), n_fake, n_real

    def compute(self) -> torch.Tensor:
        # runs inside torchmetrics' own sync; the states are already summed over processes
        coef = self._coefficients(torch.ones(self.rows, self.cols, dtype=torch.bool))
        states = {k: v.detach().cpu() for k, v in self.metric_state.items()}
        _, mu_real, cov_real = self._moments("real", coef, states)
        _, mu_fake, cov_fake = self._moments("fake", coef, states)
        return torch.tensor(frechet_from_moments(mu_real, cov_real, mu_fake, cov_fake), dtype=torch.float64)


class ClipFeatures:
    """Unit-norm CLIP image embeddings as FID features."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.name = f"Frechet CLIP distance on {scorer.name} image embeddings ({scorer.embed_dim}-d, unit norm)"
        self.kind = "clip"
        self.dim = scorer.embed_dim

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features (N, D) for float images (N, 3, H, W) in [0, 1]."""
        return self.scorer.encode_images(images).double()


class InceptionFeatures:
    """torchmetrics' FID Inception-v3 2048-d pool features from a local weights file."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        weights = Path(weights)
        if not weights.is_file():
            raise FIDError(f"Inception weights file {weights} does not exist")
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance

            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
        except ModuleNotFoundError as err:
            raise FIDError("the Inception FID needs torch-fidelity (pip install 'erase[inception]' or torch-fidelity); "
                           "or leave out --inception-weights to use the CLIP Frechet distance") from err
        except Exception as err:  # a wrong file: torch / torch-fidelity raise several types
            raise FIDError(f"cannot load Inception weights {weights}: {str(err).splitlines()[0]}") from err
        self.model = metric.inception.eval().to(device)
        self.device = torch.device(device)
        self.name = f"FID, torchmetrics Inception-v3 pool3 2048-d ({weights.name})"
        self.kind = "inception"
        self.dim = 2048

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).to(self.device)
        return self.model(x).double().cpu()
