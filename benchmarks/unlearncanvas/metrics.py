"""UnlearnCanvas metrics: UA, IRA, CRA, CLIP concept-removal accuracy, efficiency.

The official repository ships no aggregation script; the definitions here follow
``../shared/reference/unlearncanvas.md`` section 6 (the author's answers in issue #13 and the
SAeUron re-implementation):

* ``Acc_S(k)``: style-classifier accuracy over the images prompted with theme ``k`` (all objects
  and seeds); ``Acc_O(j)``: object-classifier accuracy over the images prompted with object ``j``
  (all themes *including* the photo theme and the target's row, and all seeds).
* style target s: UA = 1 - Acc_S(s); IRA = mean of Acc_S over the other styles (the photo theme
  excluded); CRA = mean of Acc_O over all objects.
* object target o: UA = 1 - Acc_O(o); IRA = mean of Acc_O over the other objects; CRA = mean of
  Acc_S over all styles (photo theme excluded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from benchmarks.unlearncanvas.constants import Domain


@dataclass
class AccuracyTable:
    """Per-concept accuracies of one answer set, with the sample counts behind them."""

    style: dict[str, float]  # Acc_S(k) per theme, label order
    object: dict[str, float]  # Acc_O(j) per object
    cells_style: list[list[float]]  # [theme][object] style accuracy of that cell
    cells_object: list[list[float]]
    images_per_theme: int
    images_per_object: int

    def to_json(self) -> dict:
        return {"style": self.style, "object": self.object, "cells_style": self.cells_style,
                "cells_object": self.cells_object, "images_per_theme": self.images_per_theme,
                "images_per_object": self.images_per_object}


def accuracy_table(domain: Domain, theme_true: Sequence[int], object_true: Sequence[int],
                   theme_pred: Sequence[int], object_pred: Sequence[int]) -> AccuracyTable:
    """Per-theme style accuracy and per-object object accuracy from per-image labels (indices)."""
    tt, ot, tp, op = (np.asarray(a, dtype=np.int64) for a in (theme_true, object_true, theme_pred, object_pred))
    if not len(tt) == len(ot) == len(tp) == len(op):
        raise ValueError("label arrays differ in length")
    if len(tt) == 0:
        raise ValueError("no images to score")
    style_ok, object_ok = tp == tt, op == ot
    nt, no = len(domain.themes), len(domain.objects)
    cs, co = np.full((nt, no), np.nan), np.full((nt, no), np.nan)
    for i in range(nt):
        for j in range(no):
            m = (tt == i) & (ot == j)
            if m.any():
                cs[i, j], co[i, j] = style_ok[m].mean(), object_ok[m].mean()
    missing = [domain.themes[i] for i in range(nt) if not (tt == i).any()]
    missing += [domain.objects[j] for j in range(no) if not (ot == j).any()]
    if missing:
        raise ValueError(f"the answer set has no image prompted with {', '.join(missing)}")
    style = {t: float(style_ok[tt == i].mean()) for i, t in enumerate(domain.themes)}
    obj = {o: float(object_ok[ot == j].mean()) for j, o in enumerate(domain.objects)}
    return AccuracyTable(style, obj, np.round(cs, 4).tolist(), np.round(co, 4).tolist(),
                         int((tt == 0).sum()), int((ot == 0).sum()))


def unlearncanvas_scores(style_acc: Mapping[str, float], object_acc: Mapping[str, float], target: str,
                         domain: Domain) -> dict:
    """UA, IRA and CRA (fractions in [0, 1]) for one erased target, from per-concept accuracies."""
    kind = domain.concept_kind(target)
    target = domain.canonical(target)
    styles = domain.styles
    if kind == "style":
        ua = 1 - style_acc[target]
        ira = float(np.mean([style_acc[k] for k in styles if k != target]))
        cra = float(np.mean([object_acc[j] for j in domain.objects]))
    else:
        ua = 1 - object_acc[target]
        ira = float(np.mean([object_acc[j] for j in domain.objects if j != target]))
        cra = float(np.mean([style_acc[k] for k in styles]))
    return {"target": target, "kind": kind, "UA": float(ua), "IRA": ira, "CRA": cra}


def removal_accuracy(theme_true: Sequence[int], object_true: Sequence[int], theme_pred: Sequence[int],
                     object_pred: Sequence[int], target: str, domain: Domain) -> tuple[float, int]:
    """Share of target-prompted images a zero-shot judge no longer assigns to the target, and their count."""
    kind, target = domain.concept_kind(target), domain.canonical(target)
    if kind == "style":
        true, pred, idx = np.asarray(theme_true), np.asarray(theme_pred), domain.themes.index(target)
    else:
        true, pred, idx = np.asarray(object_true), np.asarray(object_pred), domain.objects.index(target)
    m = true == idx
    if not m.any():
        raise ValueError(f"no image in the answer set is prompted with {target}")
    return float((pred[m] != idx).mean()), int(m.sum())


def target_mask(theme_true: Sequence[int], object_true: Sequence[int], target: str, domain: Domain) -> np.ndarray:
    """True for images whose prompt names the target (its theme row or its object column)."""
    kind, target = domain.concept_kind(target), domain.canonical(target)
    if kind == "style":
        return np.asarray(theme_true) == domain.themes.index(target)
    return np.asarray(object_true) == domain.objects.index(target)


# --------------------------------------------------------------------------- efficiency
def efficiency_from_artifact(artifact: str | Path | None) -> dict | None:
    """Time, peak memory and storage of the erasure run, read from the artifact's ``erase.json``.

    The only place that knows the ``erase.json`` cost keys (written by ``erase.cli``); ``None``
    without an artifact. Units follow the UnlearnCanvas columns: seconds, GB (10^9 bytes).
    """
    if artifact is None:
        return None
    path = Path(artifact) / "erase.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    cost = meta.get("cost") or {}
    size = cost.get("artifact_bytes")
    if size is None:
        size = sum(p.stat().st_size for p in Path(artifact).rglob("*") if p.is_file())
    peak = cost.get("peak_memory_bytes")
    return {"time_s": cost.get("seconds"),
            "memory_gb": None if peak is None else round(peak / 1e9, 4),
            "memory_kind": cost.get("peak_memory_kind"),
            "storage_gb": size / 1e9,
            "storage_bytes": int(size),
            "device": cost.get("device"),
            "source": f"{path} (cost: measured by the erasure run itself)"}
