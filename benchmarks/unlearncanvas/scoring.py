"""Score one answer set: every judge feeds per-cell Metrics, every target's numbers are sums over kept cells.

Each process scores its share of the answer set and of the reference set (chunks of 256 images,
round robin); the Metrics sum their states over processes when the numbers are read, so one
process and eight give the same counts and accuracies, and the same CLIP scores and distances up to
the order of float64 sums. The result is the ``accuracy``/``clip``/``fid``/``targets`` part of
``results.json`` and the per-cell ``cells`` (``evaluate`` adds the summary once the rows are final).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.unlearncanvas.answer_set import AnswerSet
from benchmarks.unlearncanvas.judges import Judges
from benchmarks.unlearncanvas.metrics import (
    removal_from_counts, table_from_counts, target_cells, unlearncanvas_scores)
from benchmarks.unlearncanvas.scorers.cells import CellAccuracy, CellMean
from benchmarks.unlearncanvas.scorers.fid import CELL_STATE_BUDGET, CellFrechetDistance
from erase.concepts import Domain

CHUNK = 256  # images per scoring batch (and per share of work between processes)


def _fid_metric(domain: Domain, dim: int, targets: Sequence[str]) -> CellFrechetDistance:
    rows, cols = len(domain.themes), len(domain.objects)
    if CellFrechetDistance.state_bytes(rows, cols, dim) <= CELL_STATE_BUDGET:
        return CellFrechetDistance(rows, cols, dim, layout="cells")
    return CellFrechetDistance(rows, cols, dim, layout="targets", targets=[target_cells(domain, t) for t in targets])


def score(answer: AnswerSet, domain: Domain, judges: Judges, targets: Sequence[str], photo_phrase: str = "Photo",
          progress: bool = True, process_index: int = 0, num_processes: int = 1,
          device: torch.device | str = "cpu") -> dict:
    """All metrics of one answer set for the given (canonical) targets.

    The answer set may be a subset of the grid (``--themes/--objects/--seeds``): accuracies and means are
    then over the themes and objects it holds, and the FID reference keeps only its cells. ``cells`` holds
    the per-cell counts and sums every figure is made of (the base-model baseline is cached as these).
    """
    rows, cols = len(domain.themes), len(domain.objects)
    device = torch.device(device)
    state_device = device if device.type == "cuda" else torch.device("cpu")  # float64 states; NCCL needs CUDA
    clip, fid_space, ref = judges.clip, judges.fid_space, judges.reference
    accuracy = CellAccuracy(rows, cols).to(state_device)
    zero_shot = CellAccuracy(rows, cols).to(state_device) if clip is not None else None
    clip_score = CellMean(rows, cols).to(state_device) if clip is not None else None
    grid_text = clip.grid_texts(domain, photo_phrase) if clip is not None else None
    fid = _fid_metric(domain, fid_space.dim, targets).to(state_device) if fid_space is not None else None
    with Image.open(answer.paths[0]) as im:
        size = im.size[0]  # the reference images are resized to the answer set's size
    share = len(range(process_index, -(-len(answer) // CHUNK), num_processes))
    for sl, x in tqdm(answer.batches(CHUNK, process_index, num_processes), total=share, desc="scoring",
                      disable=not progress, mininterval=5):
        themes, objects = torch.from_numpy(answer.themes[sl]), torch.from_numpy(answer.objects[sl])
        accuracy.update(*judges.classifier.predict(x), themes, objects)
        if clip is not None:
            emb = clip.encode_images(x)
            zero_shot.update(*clip.zero_shot(emb, domain, grid_text=grid_text), themes, objects)
            clip_score.update(clip.clip_score(emb, grid_text[themes * cols + objects]), themes, objects)
        if fid is not None:
            same_space = fid_space.kind == "clip" and fid_space.scorer is clip
            fid.update(emb.double() if same_space else fid_space(x), themes, objects, real=False)
    if fid is not None:
        present = np.zeros((rows, cols), dtype=bool)
        present[answer.themes, answer.objects] = True
        kept = [i for i in range(len(ref.paths)) if present[ref.themes[i], ref.objects[i]]]  # a subset's cells
        chunks = range(0, len(kept), CHUNK)
        for k in tqdm(chunks, desc="reference features", disable=not progress, mininterval=5):
            if k // CHUNK % num_processes == process_index:
                part = kept[k:k + CHUNK]
                fid.update(judges.reference_features(part, size), torch.from_numpy(ref.themes[part]),
                           torch.from_numpy(ref.objects[part]), real=True)

    counts = accuracy.counts()
    total = counts[0]
    table = table_from_counts(domain, *counts, allow_missing=True)
    out: dict = {"accuracy": table.to_json(), "targets": [],
                 "cells": {"total": total.tolist(), "style_correct": counts[1].tolist(),
                           "object_correct": counts[2].tolist()}}
    if clip is not None:
        zs_total, zs_style, zs_object = zero_shot.counts()
        score_sum, _ = clip_score.synced("value_sum", "count")
        out["cells"].update(clip_style_correct=zs_style.tolist(), clip_object_correct=zs_object.tolist(),
                            clip_score_sum=score_sum.tolist())
        out["clip"] = {"scorer": clip.name, "zero_shot": "softmax over the domain's prompt grid "
                       f"({rows}x{cols} prompts), marginalised per axis",
                       "zero_shot_style_accuracy": float(zs_style.sum() / zs_total.sum()),
                       "zero_shot_object_accuracy": float(zs_object.sum() / zs_total.sum()),
                       "zero_shot_both_accuracy": zero_shot.both_share(),
                       "clip_score": "100 * max(cos(image, own prompt), 0)", "images": int(total.sum()),
                       "scorer_held_out": clip.info or None}
    if fid is not None:
        value, generated, reference = fid.distance()
        out["fid"] = {"features": fid_space.name, "kind": fid_space.kind, "reference": ref.description,
                      "reference_images_resized_to": size,
                      "all_cells": {"value": value, "generated": generated, "reference": reference}}
    for target in targets:
        row = target_figures(out["cells"], target, domain)
        cells = target_cells(domain, target)
        if fid is not None:  # the target's cells left out on both sides
            row["fid"], row["fid_generated"], row["fid_reference"] = fid.distance(~cells)
        out["targets"].append(row)
    return out


def target_figures(cells: dict, target: str, domain: Domain) -> dict:
    """UA, IRA, CRA, image counts and (when measured) CLIP removal accuracy and CLIP scores of one target,
    from the per-cell counts of ``score`` (those of this evaluation, or the base model's cached ones)."""
    total = np.asarray(cells["total"])
    table = table_from_counts(domain, total, cells["style_correct"], cells["object_correct"], allow_missing=True)
    row = unlearncanvas_scores(table.style, table.object, target, domain)
    forget = target_cells(domain, target)
    row["forget_images"], row["retain_images"] = int(total[forget].sum()), int(total[~forget].sum())
    if "clip_score_sum" in cells:
        row["clip_removal_accuracy"], _ = removal_from_counts(total, cells["clip_style_correct"],
                                                              cells["clip_object_correct"], target, domain)
        score_sum = np.asarray(cells["clip_score_sum"])
        row["clip_score_retained"] = float(score_sum[~forget].sum() / total[~forget].sum())
        row["clip_score_forget"] = float(score_sum[forget].sum() / total[forget].sum())
    return row
