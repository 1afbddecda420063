"""Benchmark: does the embedded base model draw what it is asked to draw?

Samples the full MiniCanvas style x object prompt grid with several seeds per prompt, asks the
MiniCanvas classifier what it sees, and prints and records style and object accuracy together
with everything that produced them (model hash, classifier, seeds, sampler, hardware).

    python -m benchmarks.minicanvas_base --out outputs/base-grid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from benchmarks.unlearncanvas.report import labelled_grid
from erase.concepts import MINICANVAS, SEEDS
from erase.provenance import folder_hash, hardware, relative_path
from pipelines.judges import MINICANVAS_CLASSIFIER_DIR as CLASSIFIER_DIR
from pipelines.judges import MiniCanvasClassifier
from pipelines.stable_diffusion import ModelLoadError, generate, load_pipeline, resolve_model
from pipelines.weights import CheckpointError

DEFAULT_SEEDS = SEEDS  # the UnlearnCanvas evaluation seeds
RESULTS_FILE = Path(__file__).parent / "results" / "minicanvas_base.json"


def evaluate_grid(model: str | None, classifier_dir: str | Path, seeds: Sequence[int], steps: int,
                  guidance: float, batch_size: int = 110) -> dict:
    pipe = load_pipeline(model)
    judge = MiniCanvasClassifier.from_pretrained(classifier_dir)
    cells = [(t, o) for t in MINICANVAS.themes for o in MINICANVAS.objects]
    prompts = [MINICANVAS.prompt(t, o) for s in seeds for t, o in cells]
    image_seeds = [s for s in seeds for _ in cells]
    t0 = time.time()
    images = generate(pipe, prompts, image_seeds, steps=steps, guidance_scale=guidance, batch_size=batch_size)
    seconds = time.time() - t0
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    style_pred, object_pred = judge.predict(x)
    style_true = torch.tensor([judge.themes.index(t) for _ in seeds for t, _o in cells])
    object_true = torch.tensor([judge.objects.index(o) for _ in seeds for _t, o in cells])
    style_ok, object_ok = (style_pred == style_true), (object_pred == object_true)
    n_t, n_o = len(MINICANVAS.themes), len(MINICANVAS.objects)
    per_style = style_ok.view(len(seeds), n_t, n_o).float().mean(dim=(0, 2))
    per_object = object_ok.view(len(seeds), n_t, n_o).float().mean(dim=(0, 1))
    return {
        "images": images.reshape(len(seeds), n_t, n_o, *images.shape[1:]),
        "result": {
            "style_accuracy": round(style_ok.float().mean().item(), 4),
            "object_accuracy": round(object_ok.float().mean().item(), 4),
            "per_style": {t: round(v, 4) for t, v in zip(MINICANVAS.themes, per_style.tolist())},
            "per_object": {o: round(v, 4) for o, v in zip(MINICANVAS.objects, per_object.tolist())},
            "produced_by": {
                "model": relative_path(resolve_model(model)), "model_sha256_16": folder_hash(resolve_model(model)),
                "classifier": relative_path(classifier_dir), "classifier_sha256_16": folder_hash(classifier_dir),
                "prompts": f"{n_t} styles x {n_o} objects, template '{MINICANVAS.prompt('{style}', '{object}')}'",
                "seeds": list(seeds), "samples": len(prompts), "sampler": "DDIM eta 0", "steps": steps,
                "guidance_scale": guidance, "hardware": hardware(), "generation_seconds": round(seconds, 1),
                "torch": torch.__version__,
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder or hub id (default: the embedded model)")
    parser.add_argument("--classifier", default=str(CLASSIFIER_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--steps", type=int, default=SAMPLER_DEFAULTS["minicanvas"][0], help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=SAMPLER_DEFAULTS["minicanvas"][1])
    parser.add_argument("--out", default="outputs/base-grid", help="folder for grid.png and results.json")
    parser.add_argument("--results-file", default=None, help=f"also write the figures here (e.g. {RESULTS_FILE})")
    args = parser.parse_args(argv)
    try:
        run = evaluate_grid(args.model, args.classifier, args.seeds, args.steps, args.guidance)
    except (ModelLoadError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res = run["result"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = labelled_grid(run["images"][0], MINICANVAS.themes, MINICANVAS.objects, scale=3,
                         title=f"minicanvas-sd, seed {args.seeds[0]}: rows = style prompt, columns = object prompt")
    grid.save(out / "grid.png")
    (out / "results.json").write_text(json.dumps(res, indent=1))
    if args.results_file:
        Path(args.results_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results_file).write_text(json.dumps(res, indent=1))
    p = res["produced_by"]
    print(f"embedded base model over {p['samples']} samples ({len(args.seeds)} seeds per prompt, "
          f"{p['steps']} DDIM steps, guidance {p['guidance_scale']}):")
    print(f"  style accuracy  {res['style_accuracy']:.1%}")
    print(f"  object accuracy {res['object_accuracy']:.1%}")
    print("  per style : " + ", ".join(f"{k} {v:.0%}" for k, v in res["per_style"].items()))
    print("  per object: " + ", ".join(f"{k} {v:.0%}" for k, v in res["per_object"].items()))
    print(f"  judged by the MiniCanvas classifier; generation took {p['generation_seconds']} s on {p['hardware']}")
    print(f"wrote {out / 'grid.png'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
