"""Score one answer set: every judge feeds per-cell Metrics, every target's numbers are sums over kept cells.

Each process scores its share of the answer set and of the reference set (chunks of 256 images,
round robin); the Metrics sum their states over processes when the numbers are read, so one
process and eight give the same counts and accuracies, and the same CLIP scores and distances up to
the order of float64 sums. The result is the ``accuracy``/``clip``/``fid``/``targets``/``summary``
part of ``results.json``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.unlearncanvas.answer_set import AnswerSet, load_images
from benchmarks.unlearncanvas.judges import Judges
from benchmarks.unlearncanvas.metrics import (
    removal_from_counts, summarize, table_from_counts, target_cells, unlearncanvas_scores)
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
    """All metrics of one answer set for the given (canonical) targets."""
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
        chunks = range(0, len(ref.paths), CHUNK)
        for k in tqdm(chunks, desc="reference features", disable=not progress, mininterval=5):
            if k // CHUNK % num_processes == process_index:
                fid.update(fid_space(load_images(ref.paths[k:k + CHUNK], size=size)),
                           torch.from_numpy(ref.themes[k:k + CHUNK]), torch.from_numpy(ref.objects[k:k + CHUNK]),
                           real=True)

    counts = accuracy.counts()
    total = counts[0]
    table = table_from_counts(domain, *counts)
    out: dict = {"accuracy": table.to_json(), "targets": []}
    if clip is not None:
        zs_total, zs_style, zs_object = zero_shot.counts()
        out["clip"] = {"scorer": clip.name, "zero_shot": "softmax over the domain's prompt grid "
                       f"({rows}x{cols} prompts), marginalised per axis",
                       "zero_shot_style_accuracy": float(zs_style.sum() / zs_total.sum()),
                       "zero_shot_object_accuracy": float(zs_object.sum() / zs_total.sum()),
                       "clip_score": "100 * max(cos(image, own prompt), 0)", "images": int(total.sum()),
                       "scorer_held_out": clip.info or None}
    if fid is not None:
        value, generated, reference = fid.distance()
        out["fid"] = {"features": fid_space.name, "kind": fid_space.kind, "reference": ref.description,
                      "reference_images_resized_to": size,
                      "all_cells": {"value": value, "generated": generated, "reference": reference}}
    for target in targets:
        row = unlearncanvas_scores(table.style, table.object, target, domain)
        cells = target_cells(domain, target)
        row["forget_images"], row["retain_images"] = int(total[cells].sum()), int(total[~cells].sum())
        if clip is not None:
            row["clip_removal_accuracy"], _ = removal_from_counts(zs_total, zs_style, zs_object, target, domain)
            row["clip_score_retained"] = clip_score.mean(~cells)
            row["clip_score_forget"] = clip_score.mean(cells)
        if fid is not None:  # the target's cells left out on both sides
            row["fid"], row["fid_generated"], row["fid_reference"] = fid.distance(~cells)
        out["targets"].append(row)
    out["summary"] = summarize(out["targets"])
    return out
