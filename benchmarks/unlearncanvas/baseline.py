"""The base model's figures beside an erased model's: without them a removal figure cannot be read.

A judge that misses 30 % of a concept on the un-erased model reports 30 % "removal" before any
erasure. So every evaluation that uses CLIP also reports, per target, the base model's CLIP removal
accuracy, CLIP scores and UA on the same prompts, seeds, sampler and judges, and the difference.

The base model's answer set is drawn once per (base model hash, sampler settings, grid, judges'
hashes) and only its per-cell counts are kept, as ``<cache>/clip-baseline-<key>.json``; every later
evaluation against the same base reads them. The cache folder is ``--baseline-cache``, else
``$ERASE_CACHE/baselines``, else ``~/.cache/erase/baselines``. Evaluating the base model itself
writes its own counts there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.unlearncanvas.answer_set import (
    SamplerSettings, check_answer_folder, generate_answer_set, read_answer_set)
from benchmarks.unlearncanvas.judges import Judges
from benchmarks.unlearncanvas.scoring import score, target_figures
from erase.concepts import Domain
from erase.provenance import relative_path

CACHE_ENV = "ERASE_CACHE"
BASE_FIGURES = ("UA", "clip_removal_accuracy", "clip_score_retained", "clip_score_forget")


def default_cache() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "erase") / "baselines"


def baseline_key(base_key: str, domain: Domain, settings: SamplerSettings, judges: Judges) -> dict[str, Any]:
    """Everything the base model's counts depend on; its hash names the cache file."""
    sampler = {k: v for k, v in asdict(settings).items() if k not in SamplerSettings.GRID}
    return {"model": base_key, "domain": domain.name, "sampler": sampler, "seeds": list(settings.seeds),
            "themes": settings.themes, "objects": settings.objects,
            "classifier": judges.hashes.get("classifier"), "clip": judges.hashes.get("clip")}


def _cache_file(cache: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache / f"clip-baseline-{digest}.json"


def read_baseline(cache: str | Path, key: dict[str, Any]) -> dict | None:
    """The cached per-cell counts for ``key``, or None (absent, unreadable, or made for another key)."""
    path = _cache_file(Path(cache), key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data["cells"] if isinstance(data, dict) and data.get("key") == key and "cells" in data else None


def write_baseline(cache: str | Path, key: dict[str, Any], cells: dict) -> Path:
    """Store per-cell counts atomically (a killed run leaves no half-written cache entry)."""
    path = _cache_file(Path(cache), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "cells": cells}))
    os.replace(tmp, path)
    return path


def compute_baseline(base_pipe, cache: str | Path, key: dict[str, Any], domain: Domain, settings: SamplerSettings,
                     judges: Judges, batch_size: int, process: tuple[int, int] = (0, 1), accelerator=None,
                     progress: bool = True, device: str | torch.device = "cpu") -> dict:
    """Draw the base model's answer set (resumable, in the cache folder), score it with the classifier and
    CLIP, cache the counts and remove the images; every process returns the same counts."""
    path = _cache_file(Path(cache), key)
    folder = path.with_name(path.stem + "-answer_set")
    index, count = process
    if index == 0:
        check_answer_folder(folder, settings, key["model"])
    if accelerator is not None:
        accelerator.wait_for_everyone()
    generate_answer_set(base_pipe, folder, domain, settings, key["model"], batch_size, index, count,
                        progress=progress)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    answer = read_answer_set(folder, domain, settings.seeds, settings.ext, settings.themes, settings.objects)
    no_fid = Judges(judges.classifier, judges.classifier_name, judges.clip, hashes=judges.hashes)
    cells = score(answer, domain, no_fid, [], settings.photo_phrase, progress, index, count, device)["cells"]
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if index == 0:
        write_baseline(cache, key, cells)
        shutil.rmtree(folder, ignore_errors=True)
    return cells


def add_baseline(rows: Sequence[dict], base_cells: dict, domain: Domain) -> None:
    """Put the base model's figures (``<figure>_base``) and the change (``<figure>_change``) into each target row."""
    for row in rows:
        base = target_figures(base_cells, row["target"], domain)
        for k in BASE_FIGURES:
            if row.get(k) is not None and base.get(k) is not None:
                row[f"{k}_base"] = base[k]
                row[f"{k}_change"] = row[k] - base[k]


def describe(source: str, key: dict[str, Any], cache: str | Path | None) -> dict[str, Any]:
    """The ``clip.baseline`` entry of results.json: where the base figures came from."""
    out = {"source": source, "model": key["model"]}
    if cache is not None:
        out["cache"] = _shown(_cache_file(Path(cache), key))
    return out


def _shown(path: Path) -> str:
    """A cache file as a result file may name it: relative to the working directory when inside it, else
    from ``~``, else by its name alone (never a folder of this machine)."""
    path = path.absolute()
    if path.is_relative_to(Path.cwd()):
        return relative_path(path)
    if path.is_relative_to(Path.home()):
        return "~/" + path.relative_to(Path.home()).as_posix()
    return path.name
