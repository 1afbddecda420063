"""Benchmark: does the UnlearnDiffAtk attack have teeth on the embedded model? (calibration, issue 11)

On the **un-erased** minicanvas-sd, each style target's answer-set prompts with the style word deleted
("A Fish image in style.") are attacked towards the target style: the discrete attack (the reference's
method at the embedded budget) and the soft bound (continuous embeddings). The judge is the shipped
MiniCanvas classifier (the one that computes UA); target images are the base model's own drawings
of the full prompts with the same seeds; sampler DDIM 25, CFG 5. A high recovery rate is what makes a
low ASR on an erased model mean robustness rather than a weak attack.

    python -m benchmarks.robustness_minicanvas                       # 3 styles x 50 prompts
    python -m benchmarks.robustness_minicanvas --prompts 10 --targets Candy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from benchmarks.unlearncanvas.robustness import EMBEDDED_BUDGET, attack_target
from erase.concepts import MINICANVAS
from erase.provenance import folder_hash, hardware
from pipelines.judges import MINICANVAS_CLASSIFIER_DIR, MiniCanvasClassifier
from pipelines.stable_diffusion import EMBEDDED_MODEL_DIR, load_pipeline

RESULTS_FILE = Path(__file__).parent / "results" / "robustness_minicanvas.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["Candy", "Fire", "Neon"])
    parser.add_argument("--prompts", type=int, default=None, help="the first N prompts per target (default all 50)")
    parser.add_argument("--attacks", nargs="+", default=["unlearndiffatk", "soft"])
    parser.add_argument("--timesteps", type=int, default=EMBEDDED_BUDGET.timesteps)
    parser.add_argument("--steps-per-timestep", type=int, default=EMBEDDED_BUDGET.steps_per_timestep)
    parser.add_argument("--results-file", default=str(RESULTS_FILE))
    args = parser.parse_args(argv)
    budget = replace(EMBEDDED_BUDGET, timesteps=args.timesteps, steps_per_timestep=args.steps_per_timestep)
    pipe, judge = load_pipeline(), MiniCanvasClassifier.from_pretrained()
    steps, guidance = SAMPLER_DEFAULTS["minicanvas"]
    rows, t0 = [], time.time()
    for target in args.targets:
        for kind in args.attacks:
            row = attack_target(pipe, pipe, MINICANVAS, target, judge, budget, kind, list(MINICANVAS.seeds),
                                (steps, guidance), limit=args.prompts, calibrate=True,
                                judge_name="MiniCanvas classifier (pipelines/assets/minicanvas_classifier)")
            rows.append(row)
            print(f"calibration {target:8s} {kind:15s} recovered {row['asr']:.0%} of {row['prompts']} prompts "
                  f"(before the attack {row['pre_asr']:.0%}), {row['seconds']:.0f} s", flush=True)
    report = {"benchmark": "UnlearnDiffAtk calibration on the un-erased embedded model (style word deleted)",
              "model": "minicanvas-sd", "model_sha256_16": folder_hash(EMBEDDED_MODEL_DIR),
              "classifier_sha256_16": folder_hash(MINICANVAS_CLASSIFIER_DIR),
              "sampler": f"DDIM {steps} steps, CFG {guidance}", "seeds": list(MINICANVAS.seeds),
              "rows": rows, "hardware": hardware(), "torch": torch.__version__, "seconds": round(time.time() - t0, 1)}
    out = Path(args.results_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.rename(out)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
