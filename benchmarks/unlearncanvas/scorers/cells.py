"""Per-cell state: the torchmetrics ``Metric``s behind every UnlearnCanvas number.

An answer set is a grid of (theme, object) cells, several seeds per cell. Each metric here keeps
its sufficient statistics per cell (``add_state(..., dist_reduce_fx="sum")``), so

* the number for any erased target is a sum over the cells it keeps (a target's row or column
  out, or in), never a second pass over the images;
* processes that each score a share of the answer set sum their states (torchmetrics syncs on
  ``compute``/``sync_context`` when ``torch.distributed`` is initialised, e.g. under
  ``accelerate launch``), and ``merge_state`` does the same by hand.

``CellAccuracy`` serves both the style/object classifier and the CLIP zero-shot judge;
``CellMean`` averages a per-image value (the CLIP score). The Frechet statistics are in ``fid.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric


def cell_index(themes: torch.Tensor, objects: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    themes, objects = torch.as_tensor(themes).long().flatten(), torch.as_tensor(objects).long().flatten()
    if len(themes) != len(objects):
        raise ValueError(f"{len(themes)} theme labels but {len(objects)} object labels")
    if len(themes) and (themes.min() < 0 or themes.max() >= rows or objects.min() < 0 or objects.max() >= cols):
        raise ValueError(f"labels outside the {rows}x{cols} grid")
    return themes * cols + objects


class _CellMetric(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, rows: int, cols: int, **kwargs):
        super().__init__(**kwargs)
        if rows < 1 or cols < 1:
            raise ValueError(f"a cell grid needs at least one row and one column, got {rows}x{cols}")
        self.rows, self.cols = int(rows), int(cols)

    def _grid(self, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.zeros(self.rows, self.cols, dtype=dtype)

    def _count(self, cell: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        cell = cell if where is None else cell[where.flatten().to(cell.device)]
        return torch.bincount(cell, minlength=self.rows * self.cols).view(self.rows, self.cols)

    def synced(self, *names: str) -> tuple[torch.Tensor, ...]:
        """Copies of the named states summed over every process (the local states outside a distributed run)."""
        with self.sync_context():
            return tuple(getattr(self, n).detach().clone().cpu() for n in names)


class CellAccuracy(_CellMetric):
    """Per cell: images, correct style (theme) predictions, correct object predictions.

    ``update(theme_pred, object_pred, themes, objects)`` with label indices; ``compute()`` gives the
    per-theme style accuracy and the per-object object accuracy (``Acc_S``, ``Acc_O``).
    """

    higher_is_better = True

    def __init__(self, rows: int, cols: int, **kwargs):
        super().__init__(rows, cols, **kwargs)
        for name in ("total", "style_correct", "object_correct", "both_correct"):
            self.add_state(name, default=self._grid(), dist_reduce_fx="sum")

    def update(self, theme_pred: torch.Tensor, object_pred: torch.Tensor, themes: torch.Tensor,
               objects: torch.Tensor) -> None:
        cell = cell_index(themes, objects, self.rows, self.cols).to(self.total.device)
        theme_pred, object_pred = torch.as_tensor(theme_pred).flatten(), torch.as_tensor(object_pred).flatten()
        if not len(theme_pred) == len(object_pred) == len(cell):
            raise ValueError(f"{len(theme_pred)} style and {len(object_pred)} object predictions "
                             f"for {len(cell)} images")
        rows = torch.div(cell, self.cols, rounding_mode="floor")
        self.total += self._count(cell)
        style_ok = theme_pred.to(cell.device).long() == rows
        object_ok = object_pred.to(cell.device).long() == cell % self.cols
        self.style_correct += self._count(cell, style_ok)
        self.object_correct += self._count(cell, object_ok)
        self.both_correct += self._count(cell, style_ok & object_ok)

    def compute(self) -> dict[str, torch.Tensor]:
        per_theme, per_object = self.total.sum(1), self.total.sum(0)
        return {"style": self.style_correct.sum(1).double() / per_theme.clamp(min=1),
                "object": self.object_correct.sum(0).double() / per_object.clamp(min=1)}

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(total, style_correct, object_correct) per cell, summed over processes, as int64 arrays."""
        return tuple(t.numpy() for t in self.synced("total", "style_correct", "object_correct"))

    def both_share(self) -> float:
        """Share of images whose style and object are both right (the judge agrees with the whole prompt)."""
        total, both = self.synced("total", "both_correct")
        return float(both.sum().double() / total.sum().clamp(min=1))


class CellMean(_CellMetric):
    """Per cell: the sum of a per-image value (float64) and the image count; ``mean(keep)`` over kept cells."""

    def __init__(self, rows: int, cols: int, **kwargs):
        super().__init__(rows, cols, **kwargs)
        self.add_state("value_sum", default=self._grid(torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=self._grid(), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, themes: torch.Tensor, objects: torch.Tensor) -> None:
        cell = cell_index(themes, objects, self.rows, self.cols).to(self.count.device)
        values = torch.as_tensor(values).flatten().double().to(cell.device)
        if len(values) != len(cell):
            raise ValueError(f"{len(values)} values for {len(cell)} images")
        self.value_sum += torch.zeros(self.rows * self.cols, dtype=torch.float64, device=cell.device
                                      ).index_add_(0, cell, values).view(self.rows, self.cols)
        self.count += self._count(cell)

    def compute(self) -> torch.Tensor:
        return self.value_sum.sum() / self.count.sum().clamp(min=1)

    def mean(self, keep: np.ndarray | None = None) -> float:
        """Mean of the value over the images of the kept cells ((rows, cols) bool; None = all)."""
        value_sum, count = self.synced("value_sum", "count")
        keep = torch.ones(self.rows, self.cols, dtype=torch.bool) if keep is None else torch.as_tensor(keep)
        n = int(count[keep].sum())
        if n == 0:
            raise ValueError("no image in the kept cells")
        return float(value_sum[keep].sum() / n)
