"""Acceptance benchmark of issue 4: ESD and SalUn on the embedded model, scored with unlearncanvas-eval.

For each method and each target (one style, one object) it runs ``erase-concept`` (through its
Python API, with the embedded preset), then ``unlearncanvas-eval`` on base + artifact: the full
MiniCanvas prompt grid (11 themes x 10 objects x the 5 UnlearnCanvas seeds), the MiniCanvas
classifier for UA/IRA/CRA (definitions in ``benchmarks.unlearncanvas.metrics``), the shipped
MiniCanvas CLIP for concept-removal accuracy and a Frechet CLIP distance. The un-erased base model
is scored the same way first, as the "no erasure" row. Figures, configs, seeds and hardware go to
``benchmarks/results/erasure_minicanvas.json``.

    python -m benchmarks.erasure_minicanvas
    python -m benchmarks.erasure_minicanvas --methods esd --style-target Fire --opt esd.style:lr=3e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.unlearncanvas.evaluate import (
    EvalConfig, Results, describe_model, evaluate, evaluation_device, load_model)
from benchmarks.unlearncanvas.judges import Judges, load_judges
from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from erase.cli import erase_concept
from erase.concepts import SEEDS
from erase.loading import erased_copy
from erase.provenance import folder_hash, hardware
from pipelines.judges import MINICANVAS_CLASSIFIER_DIR
from pipelines.stable_diffusion import resolve_model
from pipelines.threads import restore_threads

RESULTS_FILE = Path(__file__).parent / "results" / "erasure_minicanvas.json"
THRESHOLDS = {"UA": 0.90, "IRA": 0.85, "CRA": 0.85}
TIME_LIMIT_S = 600
KEPT = ("UA", "IRA", "CRA", "clip_removal_accuracy", "clip_removal_accuracy_base", "clip_score_retained", "fid")


def score_model(pipe, info: dict[str, Any], out: Path, targets: Sequence[str], config: EvalConfig,
                judges: Judges) -> Results:
    """``evaluate`` on a fresh answer set in ``out`` (never one of an older model)."""
    shutil.rmtree(out, ignore_errors=True)
    return evaluate(pipe, dataclasses.replace(config, targets=list(targets), out=out), model_info=info, judges=judges)


def _row(target_row: dict) -> dict:
    return {k: round(float(target_row[k]), 4) for k in KEPT if k in target_row}


def _options(opts: Sequence[str], method: str, kind: str) -> dict[str, str]:
    """``--opt esd.style:lr=3e-4`` / ``--opt salun:alpha=1`` entries that apply to (method, kind)."""
    out = {}
    for item in opts:
        scope, _, kv = item.partition(":")
        m, _, k = scope.partition(".")
        if m == method and k in ("", kind):
            key, _, value = kv.partition("=")
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    with restore_threads():  # called in-process too (tests, notebooks): the caller keeps its thread count
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["esd", "salun"])
    p.add_argument("--model", default=None, help="base model folder (default: the embedded minicanvas-sd, whose "
                   "presets the figures use)")
    p.add_argument("--kinds", nargs="+", choices=("style", "object"), default=["style", "object"],
                   help="which targets to erase (default: both)")
    p.add_argument("--style-target", nargs="+", default=["Candy"], help="one or more style targets")
    p.add_argument("--object-target", nargs="+", default=["Fish"], help="one or more object targets")
    p.add_argument("--seed", type=int, default=0, help="erasure seed")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--eval-steps", type=int, default=SAMPLER_DEFAULTS["minicanvas"][0])
    p.add_argument("--eval-guidance", type=float, default=SAMPLER_DEFAULTS["minicanvas"][1])
    p.add_argument("--opt", action="append", default=[], help="method[.kind]:key=value, e.g. esd.style:lr=3e-4")
    p.add_argument("--work", default="outputs/erasure-minicanvas", help="artifacts and answer sets go here")
    p.add_argument("--merge", action="store_true", help="keep the runs of --results-file for the (method, target) "
                   "pairs this invocation does not run (e.g. a preset changed for one kind)")
    p.add_argument("--rescore", action="store_true", help="no erasure, no image drawn: score the answer sets of "
                   "--results-file's runs (in --work) again with the current judges and update their figures; "
                   "each answer set must have been drawn by the run's artifact (same weights hash)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.rescore:
        return rescore(Path(args.results_file), work, args.device)
    targets = [(kind, target) for kind, names in (("style", args.style_target), ("object", args.object_target))
               if kind in args.kinds for target in names]
    config = EvalConfig(seeds=args.eval_seeds, steps=args.eval_steps, guidance=args.eval_guidance,
                        device=args.device, progress=False, baseline_cache=work / "baseline-cache")
    _, device = evaluation_device(args.device)
    runs = []
    judges = load_judges(config, device)  # one classifier, CLIP and reference set for every model
    base_pipe, base_info = load_model(args.model, device=device)
    base = score_model(base_pipe, base_info, work / "eval-base", [t for _, t in targets], config, judges)
    base_rows = {r["target"]: _row(r) for r in base.targets}
    for r in base.targets:
        print(f"base   {r['kind']:6s} {r['target']:10s} UA {r['UA']:.1%}  IRA {r['IRA']:.1%}  CRA {r['CRA']:.1%}")
    for method in args.methods:
        for kind, target in targets:
            options = _options(args.opt, method, kind)
            t0 = time.perf_counter()
            out, record = erase_concept(method, target, kind, model=args.model,
                                        output=work / f"{method}-{target.lower()}", options=options,
                                        seed=args.seed, overwrite=True, device=args.device)
            wall = time.perf_counter() - t0
            res = score_model(erased_copy(base_pipe, out), describe_model(args.model, artifact=out),
                              work / f"eval-{out.name}", [target], config, judges)
            scores = _row(res.targets[0])
            ok = all(scores[k] >= v for k, v in THRESHOLDS.items()) and wall < TIME_LIMIT_S
            runs.append({"method": method, "target": target, "kind": kind, "seed": args.seed, **scores,
                         "passes": ok, "erase_wall_seconds": round(wall, 1), "cost": record.cost,
                         "config": record.config, "preset": record.preset, "cli_options": options,
                         "run_info": record.run,
                         "artifact": os.path.relpath(out), "artifact_sha256_16": folder_hash(out),
                         "eval_seconds": res.seconds["total"],
                         "per_theme_accuracy": res.accuracy["style"],
                         "per_object_accuracy": res.accuracy["object"]})
            print(f"{method:6s} {kind:6s} {target:10s} UA {scores['UA']:.1%}  IRA {scores['IRA']:.1%}  "
                  f"CRA {scores['CRA']:.1%}  erase {wall:.0f} s  {'PASS' if ok else 'FAIL'}", flush=True)
    result = {
        "benchmark": "erasure_minicanvas (issue 4 acceptance)", "thresholds": THRESHOLDS,
        "time_limit_seconds": TIME_LIMIT_S, "runs": runs,
        "base_model": {"targets": base_rows, "per_theme_accuracy": base.accuracy["style"],
                       "per_object_accuracy": base.accuracy["object"]},
        "produced_by": {"scorer": "unlearncanvas-eval (benchmarks.unlearncanvas.evaluate): MiniCanvas classifier, "
                                  "both heads, argmax; CLIP = " + str((base.clip or {}).get("scorer")) +
                                  "; FID = " + str((base.fid or {}).get("features")),
                        "fid_reference": (base.fid or {}).get("reference"),
                        "model": base_info["base"], "model_sha256_16": folder_hash(resolve_model(args.model)),
                        "classifier_sha256_16": folder_hash(MINICANVAS_CLASSIFIER_DIR),
                        "judges_content_sha256_16": base.comparable and {
                            k: base.comparable[k] for k in ("classifier_sha256_16", "clip_sha256_16",
                                                            "fid_features_sha256_16", "fid_reference_sha256_16")},
                        "prompts": "11 themes x 10 objects, 'A {object} image in {style} style.'",
                        "eval_seeds": args.eval_seeds, "samples_per_model": base.answer_set["images"],
                        "sampler": "DDIM eta 0", "steps": args.eval_steps, "guidance_scale": args.eval_guidance,
                        "hardware": hardware(), "torch": torch.__version__},
    }
    if args.merge and Path(args.results_file).is_file():
        old = json.loads(Path(args.results_file).read_text())
        ran = {(r["method"], r["target"]) for r in runs}
        kept = [r for r in old["runs"] if (r["method"], r["target"]) not in ran]
        for r in kept:
            r.setdefault("from_earlier_run", True)
        result["runs"] = kept + runs
        result["base_model"]["targets"] = {**old["base_model"]["targets"], **base_rows}
        runs = result["runs"]
    Path(args.results_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_file).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.results_file}")
    return 0 if all(r["passes"] for r in runs) else 1


def rescore(results_file: Path, work: Path, device: str | None = None) -> int:
    """Score every run's answer set (``<work>/eval-<artifact>``) again with today's judges; the base first, so
    its counts are the baseline the artifacts' rows are read against. Figures that judges do not decide
    (erase time, cost, config) are kept; each run records the judges' hashes it was rescored with."""
    result = json.loads(results_file.read_text())
    cache = work / "baseline-cache"

    def scored(folder: Path, targets: Sequence[str]) -> Results:
        answers = folder / "answer_set"
        config = EvalConfig(answer_dir=answers, targets=list(targets), out=work / f"rescore-{folder.name}",
                            device=device, progress=False, baseline_cache=cache)
        return evaluate(None, config)

    base = scored(work / "eval-base", sorted({r["target"] for r in result["runs"]}))
    result["base_model"]["targets"] = {r["target"]: _row(r) for r in base.targets}
    for run in result["runs"]:
        folder = work / f"eval-{Path(run['artifact']).name}"
        res = scored(folder, [run["target"]])
        drawn_by = res.model.get("weights_sha256_16")
        if drawn_by != run["artifact_sha256_16"]:
            raise SystemExit(f"error: {folder}/answer_set was drawn by weights {drawn_by}, the run's artifact is "
                             f"{run['artifact_sha256_16']}")
        run.update(_row(res.targets[0]))
        run["rescored_with"] = {k: res.comparable[k] for k in ("classifier_sha256_16", "clip_sha256_16",
                                                                "fid_features_sha256_16", "fid_reference_sha256_16")}
        print(f"{run['method']:10s} {run['target']:8s} UA {run['UA']:.1%}  CLIP removal "
              f"{run.get('clip_removal_accuracy', 0):.1%} (base {run.get('clip_removal_accuracy_base', 0):.1%})")
    result["produced_by"]["scorer"] = ("unlearncanvas-eval (benchmarks.unlearncanvas.evaluate): MiniCanvas "
                                       f"classifier, both heads, argmax; CLIP = {base.clip['scorer']}; "
                                       f"FID = {(base.fid or {}).get('features')}")
    result["produced_by"]["rescored"] = ("answer sets of the runs above scored again with the judges of each "
                                         "run's rescored_with (python -m benchmarks.erasure_minicanvas --rescore)")
    results_file.write_text(json.dumps(result, indent=1))
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
