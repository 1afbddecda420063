"""Acceptance benchmark of issue 4: ESD and SalUn on the embedded model, scored UnlearnCanvas-style.

For each method and each target (one style, one object) it runs ``erase-concept`` (through its
Python API, with the embedded preset), loads base + artifact with
``pipelines.stable_diffusion.load_erased_pipeline``, samples the full MiniCanvas prompt grid
(11 themes x 10 objects x the 5 UnlearnCanvas seeds) and judges it with the MiniCanvas classifier:

    style target s:  UA = 1 - Acc_S(s)   IRA = mean_{k in S\\{s}} Acc_S(k)   CRA = mean_{j in O} Acc_O(j)
    object target o: UA = 1 - Acc_O(o)   IRA = mean_{j in O\\{o}} Acc_O(j)   CRA = mean_{k in S} Acc_S(k)

Acc_S(k): style-head accuracy on images prompted with theme k (all objects, all seeds); Acc_O(j):
object-head accuracy on images prompted with object j (all 11 themes); S excludes Photo
(unlearncanvas.md section 6). ``minicanvas_ua_ira_cra`` is this script's own scorer, to be swapped
for ``unlearncanvas-eval`` (benchmarks.unlearncanvas.run / metrics) once that exists.

    python -m benchmarks.erasure_minicanvas                     # writes benchmarks/results/erasure_minicanvas.json
    python -m benchmarks.erasure_minicanvas --methods esd --style-target Fire --opt esd.style:lr=3e-4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.minicanvas_base import DEFAULT_SEEDS, folder_hash, hardware
from benchmarks.unlearncanvas import minicanvas
from benchmarks.unlearncanvas.classifier import SHIPPED_DIR as CLASSIFIER_DIR
from benchmarks.unlearncanvas.classifier import MiniCanvasClassifier
from pipelines.minicanvas_model import caption
from pipelines.stable_diffusion import generate, load_erased_pipeline, load_pipeline, resolve_model

RESULTS_FILE = Path(__file__).parent / "results" / "erasure_minicanvas.json"
THRESHOLDS = {"UA": 0.90, "IRA": 0.85, "CRA": 0.85}
TIME_LIMIT_S = 600


def grid_accuracies(pipe, judge: MiniCanvasClassifier, seeds: Sequence[int], steps: int, guidance: float,
                    batch_size: int = 110) -> tuple[dict[str, float], dict[str, float]]:
    """Acc_S per theme and Acc_O per object over the full prompt grid."""
    cells = [(t, o) for t in minicanvas.THEMES for o in minicanvas.OBJECTS]
    prompts = [caption(t, o) for _ in seeds for t, o in cells]
    images = generate(pipe, prompts, [s for s in seeds for _ in cells], steps=steps, guidance_scale=guidance,
                      batch_size=batch_size)
    style_pred, object_pred = judge.predict(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    style_ok = (style_pred == torch.tensor([judge.themes.index(t) for _ in seeds for t, _ in cells])).float()
    object_ok = (object_pred == torch.tensor([judge.objects.index(o) for _ in seeds for _, o in cells])).float()
    n_t, n_o = len(minicanvas.THEMES), len(minicanvas.OBJECTS)
    acc_s = style_ok.view(len(seeds), n_t, n_o).mean(dim=(0, 2))
    acc_o = object_ok.view(len(seeds), n_t, n_o).mean(dim=(0, 1))
    return (dict(zip(minicanvas.THEMES, acc_s.tolist())), dict(zip(minicanvas.OBJECTS, acc_o.tolist())))


def minicanvas_ua_ira_cra(acc_s: dict[str, float], acc_o: dict[str, float], target: str, kind: str) -> dict:
    """UA, IRA, CRA of one erased model from its per-theme / per-object accuracies (fractions)."""
    styles = [s for s in minicanvas.THEMES if s != minicanvas.PHOTO_THEME]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    if kind == "style":
        return {"UA": 1 - acc_s[target], "IRA": mean([acc_s[k] for k in styles if k != target]),
                "CRA": mean(list(acc_o.values()))}
    return {"UA": 1 - acc_o[target], "IRA": mean([acc_o[j] for j in minicanvas.OBJECTS if j != target]),
            "CRA": mean([acc_s[k] for k in styles])}


def unlearncanvas_eval_scores(artifact: Path, target: str, out: Path, device: str | None, seeds: Sequence[int],
                              steps: int, guidance: float) -> dict:
    """UA/IRA/CRA of one artifact from ``unlearncanvas-eval`` (benchmarks.unlearncanvas.run), CLIP and FID off."""
    from benchmarks.unlearncanvas import run as uc_run

    argv = ["--artifact", str(artifact), "--out", str(out), "--target", target, "--no-clip", "--no-fid",
            "--no-progress", "--seeds", *map(str, seeds), "--steps", str(steps), "--guidance", str(guidance)]
    argv += ["--device", device] if device else []
    code = uc_run.main(argv)
    if code != 0:
        raise RuntimeError(f"unlearncanvas-eval {' '.join(argv)} exited {code}")
    row = json.loads((out / uc_run.RESULTS_JSON).read_text())["targets"][0]
    return {k: float(row[k]) for k in ("UA", "IRA", "CRA")}


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
    from erase.cli import erase_concept

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["esd", "salun"])
    p.add_argument("--style-target", default="Candy")
    p.add_argument("--object-target", default="Fish")
    p.add_argument("--seed", type=int, default=0, help="erasure seed")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--eval-guidance", type=float, default=5.0)
    p.add_argument("--opt", action="append", default=[], help="method[.kind]:key=value, e.g. esd.style:lr=3e-4")
    p.add_argument("--work", default="outputs/erasure-minicanvas", help="artifacts go here")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    p.add_argument("--evaluator", choices=("unlearncanvas-eval", "builtin"), default="unlearncanvas-eval",
                   help="score with benchmarks.unlearncanvas.run, or with this script's minicanvas_ua_ira_cra")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = MiniCanvasClassifier.from_pretrained(CLASSIFIER_DIR)
    eval_kw = dict(seeds=args.eval_seeds, steps=args.eval_steps, guidance=args.eval_guidance)
    base_s, base_o = grid_accuracies(load_pipeline(device=args.device), judge, **eval_kw)
    runs = []
    for method in args.methods:
        for kind, target in (("style", args.style_target), ("object", args.object_target)):
            out = Path(args.work) / f"{method}-{target.lower()}"
            options = _options(args.opt, method, kind)
            t0 = time.perf_counter()
            out, meta = erase_concept(method, target, kind, output=out, options=options, seed=args.seed,
                                      overwrite=True, device=args.device)
            wall = time.perf_counter() - t0
            acc_s, acc_o = grid_accuracies(load_erased_pipeline(out, device=args.device), judge, **eval_kw)
            scores = builtin = minicanvas_ua_ira_cra(acc_s, acc_o, target, kind)
            if args.evaluator == "unlearncanvas-eval":  # the figures that count; builtin ones kept as a check
                eval_dir = Path(args.work) / f"eval-{out.name}"
                shutil.rmtree(eval_dir, ignore_errors=True)  # never resume an answer set of an older artifact
                scores = unlearncanvas_eval_scores(out, target, eval_dir, args.device, **eval_kw)
            ok = all(scores[k] >= v for k, v in THRESHOLDS.items()) and wall < TIME_LIMIT_S
            runs.append({"method": method, "target": target, "kind": kind, "seed": args.seed,
                         **{k: round(v, 4) for k, v in scores.items()}, "passes": ok, "evaluator": args.evaluator,
                         "builtin_scores": ({k: round(v, 4) for k, v in builtin.items()}
                                            if args.evaluator == "unlearncanvas-eval" else None),
                         "erase_wall_seconds": round(wall, 1), "cost": meta["cost"], "config": meta["config"],
                         "preset": meta["preset"], "cli_options": options, "artifact": str(out),
                         "per_theme_accuracy": {k: round(v, 4) for k, v in acc_s.items()},
                         "per_object_accuracy": {k: round(v, 4) for k, v in acc_o.items()}})
            print(f"{method:6s} {kind:6s} {target:10s} UA {scores['UA']:.1%}  IRA {scores['IRA']:.1%}  "
                  f"CRA {scores['CRA']:.1%}  erase {wall:.0f} s  {'PASS' if ok else 'FAIL'}", flush=True)
    result = {
        "benchmark": "erasure_minicanvas (issue 4 acceptance)", "thresholds": THRESHOLDS,
        "time_limit_seconds": TIME_LIMIT_S, "runs": runs,
        "base_model": {"per_theme_accuracy": {k: round(v, 4) for k, v in base_s.items()},
                       "per_object_accuracy": {k: round(v, 4) for k, v in base_o.items()}},
        "produced_by": {"scorer": (args.evaluator if args.evaluator != "builtin" else
                                   "benchmarks.erasure_minicanvas.minicanvas_ua_ira_cra") +
                                  " (MiniCanvas classifier, both heads, argmax); builtin_scores use this script's "
                                  "own grid with the settings below",
                        "model": "minicanvas-sd", "model_sha256_16": folder_hash(resolve_model(None)),
                        "classifier_sha256_16": folder_hash(CLASSIFIER_DIR),
                        "prompts": "11 themes x 10 objects, 'A {object} image in {style} style.'",
                        "eval_seeds": args.eval_seeds, "samples_per_model": 110 * len(args.eval_seeds),
                        "sampler": "DDIM eta 0", "steps": args.eval_steps, "guidance_scale": args.eval_guidance,
                        "hardware": hardware(), "torch": torch.__version__},
    }
    Path(args.results_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_file).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.results_file}")
    return 0 if all(r["passes"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
