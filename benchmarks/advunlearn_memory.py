"""Peak memory of AdvUnlearn at Stable Diffusion 1.5 size (issue 12's memory goal: <= 16 GB on a GPU at 512 px).

Builds SD 1.5-shaped components from configs (UNet 860 M, CLIP ViT-L/14 text encoder 123 M, VAE; random
weights: memory does not depend on the values), saves them once as a model folder, and runs a few
AdvUnlearn iterations on the CPU, each setting in a fresh process, at 64 px and 128 px (latents 8x8 and
16x16), with and without gradient checkpointing, and with the UNet in bf16. Every run reports the
bytes of the weights it holds (counted exactly), the process's peak (``ru_maxrss``) and the difference
(the run's working memory: activations, gradients, optimizer state, the runtime itself). The 512 px GPU figure is an estimate, never a measurement here: exact byte counts of what a GPU
holds (bf16 UNet, trained and frozen encoders, Adam moments and gradients of the trained part) plus the
working memory extrapolated from the two sizes, linear in latent area, and halved for bf16 activations.

    python -m benchmarks.advunlearn_memory            # about 10 minutes on 2 cores, 8 GB of disk in /tmp
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from benchmarks.sd15_shapes import (TEXT_PARAMETERS, TEXT_SD15, UNET_PARAMETERS, UNET_SD15,  # noqa: F401 (re-exported)
                                    VAE_PARAMETERS, build_text_encoder, build_unet, build_vae)
from erase.concepts import resolve_concept
from erase.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig
from erase.methods.config import build_config
from erase.provenance import hardware, versions
from erase.trainer import TrainerConfig, train
from pipelines.stable_diffusion import load_pipeline
from pipelines.tokenizer import build_clip_tokenizer

RESULTS_FILE = Path(__file__).parent / "results" / "advunlearn_memory.json"
NOTES = ("the bf16 row's peak keeps the high-water mark of the float32 UNet as loaded (its first step casts it), "
         "so only its weights_gib shows the saving; the 512 px estimates use the float32 rows")
GIB = 2**30
# a short run that still takes every path of an iteration: attack round, ESD loss, retain loss of 5 prompts
RUN_OPTIONS = {"steps": 2, "warmup": 0, "attack_steps": 2, "attack_resample": False, "ddim_steps": 4,
               "retain_batch": 5, "lr": 1e-5}


def build_folder(folder: Path) -> None:
    pipe = StableDiffusionPipeline(
        unet=build_unet(), vae=build_vae(), text_encoder=build_text_encoder(), tokenizer=build_clip_tokenizer(),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)


def _measure(folder: str, latent: int, checkpointing: bool, precision: str, threads: int, queue) -> None:
    """One setting in its own process: resident memory after loading, peak, seconds."""
    torch.set_num_threads(threads)
    pipe = load_pipeline(folder, progress=False)
    pipe.unet.register_to_config(sample_size=latent)
    config = build_config(AdvUnlearnConfig, {**RUN_OPTIONS, "gradient_checkpointing": checkpointing})
    method = AdvUnlearn(config, resolve_concept("Van Gogh"), pipe)
    result = train(method, TrainerConfig(steps=config.steps, progress=False, mixed_precision=precision))
    # weights held during the run, counted exactly (resident memory after loading undercounts: lazily mapped)
    held = [pipe.unet, pipe.vae, pipe.text_encoder, method.original]
    loaded = sum(t.numel() * t.element_size() for m in held for t in (*m.parameters(), *m.buffers()))
    queue.put({"latent": latent, "pixels": latent * 8, "gradient_checkpointing": checkpointing,
               "mixed_precision": precision, "unet_dtype": method.run_info()["unet_dtype"],
               "weights_gib": round(loaded / GIB, 3), "peak_gib": round(result.peak_memory_bytes / GIB, 3),
               "working_gib": round((result.peak_memory_bytes - loaded) / GIB, 3), "seconds": result.seconds,
               "trained_parameters": method.run_info()["trained_parameters"]})


def measure(folder: Path, latent: int, checkpointing: bool, precision: str = "no", threads: int = 2
            ) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(str(folder), latent, checkpointing, precision, threads, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def gpu_estimate(rows: list[dict[str, Any]], trained: int, checkpointing: bool) -> dict[str, Any]:
    """Bytes a GPU holds at 512 px: exact static part + working memory extrapolated in latent area, bf16."""
    unet, text, vae = UNET_PARAMETERS, TEXT_PARAMETERS, VAE_PARAMETERS  # parameter counts of the SD 1.5 components
    static = {"unet_bf16": unet * 2, "text_encoder_trained_fp32": text * 4, "text_encoder_frozen_fp32": text * 4,
              "adam_moments_fp32": trained * 8, "gradients_fp32": trained * 4, "vae_fp32_unused_by_training": vae * 4}
    fp32 = sorted((r for r in rows if r["gradient_checkpointing"] == checkpointing and r["mixed_precision"] == "no"),
                  key=lambda r: r["latent"])
    small, large = fp32[0], fp32[-1]
    slope = (large["working_gib"] - small["working_gib"]) / (large["latent"] ** 2 - small["latent"] ** 2)
    working_512 = small["working_gib"] + slope * (64 ** 2 - small["latent"] ** 2)
    total = sum(static.values()) / GIB + working_512 / 2
    return {"gradient_checkpointing": checkpointing, "static_gib": {k: round(v / GIB, 2) for k, v in static.items()},
            "working_fp32_at_512_gib": round(working_512, 2), "working_bf16_at_512_gib": round(working_512 / 2, 2),
            "total_gib": round(total, 1),
            "method": f"static bytes exact; working memory linear in latent area through the CPU runs at "
                      f"{small['pixels']} and {large['pixels']} px, halved for bf16 activations"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="SD 1.5-shaped model folder (default: built in a temp folder)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sd15-shape-") as tmp:
        folder = Path(args.folder or Path(tmp) / "sd15")
        if not (folder / "model_index.json").is_file():
            t0 = time.perf_counter()
            build_folder(folder)
            print(f"built the SD 1.5-shaped folder in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for latent, checkpointing, precision in ((8, False, "no"), (16, False, "no"), (8, True, "no"),
                                                 (16, True, "no"), (16, True, "bf16")):
            rows.append(measure(folder, latent, checkpointing, precision, args.threads))
            r = rows[-1]
            print(f"{r['pixels']:4d} px  checkpointing {str(checkpointing):5s}  {precision:4s}  weights "
                  f"{r['weights_gib']:.2f} GiB  peak {r['peak_gib']:.2f} GiB  working {r['working_gib']:.2f} "
                  f"GiB  ({r['seconds']:.0f} s)", flush=True)
    trained = rows[0]["trained_parameters"]
    estimates = [gpu_estimate(rows, trained, c) for c in (False, True)]
    for e in estimates:
        print(f"estimate, 512 px on a GPU, bf16 UNet, checkpointing {e['gradient_checkpointing']}: {e['total_gib']} GiB")
    report = {"benchmark": "AdvUnlearn peak memory at SD 1.5 shape (issue 12)", "run_options": RUN_OPTIONS,
              "concept": "Van Gogh", "retain_prompts": "coco-objects", "memory_kind": "process_max_rss (CPU)",
              "rows": rows, "gpu_512_estimates": estimates, "threads": args.threads, "notes": NOTES,
              "reference": "OPTML-Group/AdvUnlearn issue #1: about 40 GB on a GPU", "hardware": hardware(),
              "versions": versions()}
    out = Path(args.results_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
