"""UnlearnCanvas metrics: UA, IRA, CRA, CLIP concept-removal accuracy, summaries, efficiency.

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

Every formula works on per-cell counts (images, correct style and object predictions per
(theme, object) cell), which is the state ``scorers.cells.CellAccuracy`` keeps; the per-image
helpers count first and call the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from erase.artifacts import read_record
from erase.concepts import Domain
from erase.provenance import relative_path


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


def cell_counts(domain: Domain, theme_true: Sequence[int], object_true: Sequence[int], theme_pred: Sequence[int],
                object_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, correct style, correct object) per (theme, object) cell from per-image label indices."""
    tt, ot, tp, op = (np.asarray(a, dtype=np.int64) for a in (theme_true, object_true, theme_pred, object_pred))
    if not len(tt) == len(ot) == len(tp) == len(op):
        raise ValueError("label arrays differ in length")
    shape = (len(domain.themes), len(domain.objects))
    cell = np.ravel_multi_index((tt, ot), shape)
    count = lambda where: np.bincount(cell[where], minlength=shape[0] * shape[1]).reshape(shape)  # noqa: E731
    return count(slice(None)), count(tp == tt), count(op == ot)


def table_from_counts(domain: Domain, total: np.ndarray, style_correct: np.ndarray,
                      object_correct: np.ndarray, allow_missing: bool = False) -> AccuracyTable:
    """Per-theme style accuracy and per-object object accuracy from per-cell counts.

    ``allow_missing``: a subset answer set; themes and objects without images are left out of the table
    (and so out of every mean), instead of refused.
    """
    total, style_correct, object_correct = (np.asarray(a, dtype=np.int64)
                                            for a in (total, style_correct, object_correct))
    if total.sum() == 0:
        raise ValueError("no images to score")
    missing = [domain.themes[i] for i in range(len(domain.themes)) if total[i].sum() == 0]
    missing += [domain.objects[j] for j in range(len(domain.objects)) if total[:, j].sum() == 0]
    if missing and not allow_missing:
        raise ValueError(f"the answer set has no image prompted with {', '.join(missing)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        cs, co = style_correct / total, object_correct / total  # nan where a cell holds no image
    style = {t: float(style_correct[i].sum() / total[i].sum()) for i, t in enumerate(domain.themes)
             if total[i].sum()}
    obj = {o: float(object_correct[:, j].sum() / total[:, j].sum()) for j, o in enumerate(domain.objects)
           if total[:, j].sum()}
    per_theme, per_object = total.sum(1), total.sum(0)
    return AccuracyTable(style, obj, np.round(cs, 4).tolist(), np.round(co, 4).tolist(),
                         int(per_theme[per_theme > 0][0]), int(per_object[per_object > 0][0]))


def accuracy_table(domain: Domain, theme_true: Sequence[int], object_true: Sequence[int],
                   theme_pred: Sequence[int], object_pred: Sequence[int]) -> AccuracyTable:
    """Per-theme style accuracy and per-object object accuracy from per-image labels (indices)."""
    return table_from_counts(domain, *cell_counts(domain, theme_true, object_true, theme_pred, object_pred))


def unlearncanvas_scores(style_acc: Mapping[str, float], object_acc: Mapping[str, float], target: str,
                         domain: Domain) -> dict:
    """UA, IRA and CRA (fractions in [0, 1]) for one erased target, from per-concept accuracies.

    Means run over the concepts the accuracies hold: all of them for the protocol, a subset's otherwise.
    """
    kind = domain.concept_kind(target)
    target = domain.canonical(target)
    styles = [k for k in domain.styles if k in style_acc]
    objects = [j for j in domain.objects if j in object_acc]
    if kind == "style":
        ua = 1 - style_acc[target]
        ira = float(np.mean([style_acc[k] for k in styles if k != target]))
        cra = float(np.mean([object_acc[j] for j in objects]))
    else:
        ua = 1 - object_acc[target]
        ira = float(np.mean([object_acc[j] for j in objects if j != target]))
        cra = float(np.mean([style_acc[k] for k in styles]))
    return {"target": target, "kind": kind, "UA": float(ua), "IRA": ira, "CRA": cra}


def target_cells(domain: Domain, target: str) -> np.ndarray:
    """(themes, objects) bool: True for the cells whose prompt names the target (its row or its column)."""
    kind, name = domain.concept_kind(target), domain.canonical(target)
    cells = np.zeros((len(domain.themes), len(domain.objects)), dtype=bool)
    if kind == "style":
        cells[domain.themes.index(name), :] = True
    else:
        cells[:, domain.objects.index(name)] = True
    return cells


def target_mask(theme_true: Sequence[int], object_true: Sequence[int], target: str, domain: Domain) -> np.ndarray:
    """Per image: True when its prompt names the target (its theme row or its object column)."""
    return target_cells(domain, target)[np.asarray(theme_true), np.asarray(object_true)]


def removal_from_counts(total: np.ndarray, style_correct: np.ndarray, object_correct: np.ndarray, target: str,
                        domain: Domain) -> tuple[float, int]:
    """Share of target-prompted images a judge no longer assigns to the target, and their count."""
    kind, target = domain.concept_kind(target), domain.canonical(target)
    cells = target_cells(domain, target)
    n = int(np.asarray(total)[cells].sum())
    if n == 0:
        raise ValueError(f"no image in the answer set is prompted with {target}")
    kept = np.asarray(style_correct if kind == "style" else object_correct)[cells].sum()
    return float((n - kept) / n), n


def removal_accuracy(theme_true: Sequence[int], object_true: Sequence[int], theme_pred: Sequence[int],
                     object_pred: Sequence[int], target: str, domain: Domain) -> tuple[float, int]:
    """``removal_from_counts`` from per-image label indices."""
    return removal_from_counts(*cell_counts(domain, theme_true, object_true, theme_pred, object_pred), target, domain)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (Wilson 1927): an attack success rate over 20 prompts
    is a coin count, and two methods' rates mean something only where their intervals say so."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    rate, z2 = successes / trials, z * z
    centre = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * np.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def summarize(rows: Sequence[dict]) -> dict:
    """Means over style targets and over object targets, as the UnlearnCanvas table reports them."""
    summary: dict = {}
    for kind in ("style", "object"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            summary[kind] = {k: float(np.mean([r[k] for r in sel])) for k in ("UA", "IRA", "CRA")}
            for k in ("clip_removal_accuracy", "clip_removal_accuracy_base", "clip_score_retained", "fid"):
                if all(r.get(k) is not None for r in sel):
                    summary[kind][k] = float(np.mean([r[k] for r in sel]))
            summary[kind]["targets"] = len(sel)
    return summary


# --------------------------------------------------------------------------- efficiency
def efficiency_from_artifact(artifact: str | Path | None) -> dict | None:
    """Time, peak memory and storage of the erasure run, from the artifact's record (``erase.json``).

    ``None`` without an artifact. Units follow the UnlearnCanvas columns: seconds, GB (10^9 bytes).
    """
    if artifact is None:
        return None
    cost = read_record(artifact).cost or {}
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
            "source": f"{relative_path(Path(artifact) / 'erase.json')} (cost: measured by the erasure run itself)"}
