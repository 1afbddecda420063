"""The README table "Memory at SD 1.5, 512 px": fixed and per-image bytes of each method and of the evaluation,
the peak with the defaults, and the batch ``erase.memory`` chooses on 24, 40 and 80 GB GPUs (estimates).

Built from the models' exact parameter counts (SD 1.5-shaped components and the UnlearnCanvas judges, built
on the ``meta`` device: no weights, no download), the per-image figures of ``erase.memory`` (measured on the
CPU by ``benchmarks/memory_sd15.py``) and, for AdvUnlearn, ``benchmarks/results/advunlearn_memory.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import timm
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.sd15_shapes import TEXT_SD15, UNET_SD15, VAE_SD15
from erase.concepts import resolve_concept
from erase.memory import (CUDA_CONTEXT_BYTES, GIB, MemoryProfile, eval_peak_bytes, method_peak_bytes,
                          per_image_bytes, plan_eval_batch, plan_method_batch, usable_bytes)
from erase.methods.esd import ESD, ESDConfig
from erase.methods.salun import SalUn, SalUnConfig
from pipelines.stable_diffusion import DECODE_BATCH

ADVUNLEARN_FILE = Path(__file__).parent / "results" / "advunlearn_memory.json"
GPUS_GIB = (24, 40, 80)
LATENT = 64  # 512 px


class _Pipe:
    """The parts of an SD 1.5 pipeline a memory profile reads, on the meta device."""

    def __init__(self) -> None:
        with torch.device("meta"):
            self.unet = UNet2DConditionModel(**UNET_SD15)
            self.vae = AutoencoderKL(**VAE_SD15)
            self.text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_SD15))

    def weight_bytes(self, unet_bytes_per_value: int = 4, other_bytes_per_value: int = 4) -> int:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return count(self.unet) * unet_bytes_per_value + \
            (count(self.vae) + count(self.text_encoder)) * other_bytes_per_value


def judge_bytes() -> dict[str, int]:
    """float32 bytes of the UnlearnCanvas judges: two ViT-L/16 classifiers (51 styles, 20 objects), CLIP ViT-L-14."""
    with torch.device("meta"):
        styles = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=51)
        objects = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=20)
    clip = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    return {name: 4 * sum(p.numel() for p in m.parameters())
            for name, m in (("style_classifier", styles), ("object_classifier", objects), ("clip_vit_l_14", clip))}


def _gib(value: float) -> float:
    return round(value / GIB, 2)


def _method_row(name: str, profile: MemoryProfile, batch: int, weights: int, precision: str) -> dict[str, Any]:
    per_item = profile.train_samples * per_image_bytes(profile.train_phase, LATENT, precision)
    gpus = {}
    for total in GPUS_GIB:
        free = total * GIB - CUDA_CONTEXT_BYTES - weights
        plan = plan_method_batch(profile, batch, False, free, UNET_SD15, LATENT, precision)
        gpus[str(total)] = {"batch": plan.batch, "grad_accum": plan.grad_accum,
                            "peak_gib": _gib(weights + plan.estimated_peak_bytes),
                            "fits": plan.estimated_peak_bytes <= usable_bytes(free)}
    return {"run": name, "precision": precision, "fixed_gib": _gib(weights + profile.fixed_bytes()),
            "per_image_gib": _gib(per_item), "default_batch": batch,
            "default_peak_gib": _gib(weights + method_peak_bytes(profile, batch, LATENT, precision)), "gpus": gpus}


def _eval_row(weights: int, judges: int, precision: str) -> dict[str, Any]:
    gpus = {}
    for total in GPUS_GIB:
        free = total * GIB - CUDA_CONTEXT_BYTES - weights - judges
        plan = plan_eval_batch(64, None, free, UNET_SD15, LATENT, precision, DECODE_BATCH)
        gpus[str(total)] = {"batch": plan.batch, "grad_accum": 1, "peak_gib": _gib(weights + judges +
                            plan.estimated_peak_bytes), "fits": plan.estimated_peak_bytes <= usable_bytes(free)}
    return {"run": "evaluation (answer set)", "precision": precision, "fixed_gib": _gib(weights + judges),
            "per_image_gib": _gib(2 * per_image_bytes("unet_infer", LATENT, precision)), "default_batch": 64,
            "default_peak_gib": _gib(weights + judges + eval_peak_bytes(64, LATENT, precision, DECODE_BATCH)),
            "gpus": gpus}


def _advunlearn_rows() -> list[dict[str, Any]]:
    """AdvUnlearn keeps its batch (one prompt + 5 retain prompts): its estimate from advunlearn_memory.json."""
    data = json.loads(ADVUNLEARN_FILE.read_text())
    rows = []
    for est in data["gpu_512_estimates"]:
        static = sum(est["static_gib"].values())
        peak = est["total_gib"]
        rows.append({"run": "AdvUnlearn" + (" (gradient checkpointing)" if est["gradient_checkpointing"] else ""),
                     "precision": "bf16", "fixed_gib": round(static, 2), "per_image_gib": None, "default_batch": None,
                     "default_peak_gib": peak, "source": "benchmarks/results/advunlearn_memory.json",
                     "gpus": {str(t): {"batch": None, "grad_accum": 1, "peak_gib": peak,
                                       "fits": peak * GIB <= usable_bytes(t * GIB - CUDA_CONTEXT_BYTES)}
                              for t in GPUS_GIB}})
    return rows


def table_rows() -> list[dict[str, Any]]:
    """Every row of the README table, as stored under ``table`` in ``benchmarks/results/memory_sd15.json``."""
    pipe = _Pipe()
    weights = pipe.weight_bytes()
    rows = []
    for precision in ("no", "bf16"):
        label = "fp32" if precision == "no" else "bf16"
        for name, cls, cfg, concept in (("ESD-x", ESD, ESDConfig(), "Van Gogh"), ("ESD-u", ESD, ESDConfig(), "Dogs"),
                                        ("SalUn", SalUn, SalUnConfig(), "Van Gogh")):
            profile = cls.memory_profile(cfg, resolve_concept(concept), pipe)
            rows.append({**_method_row(name, profile, cfg.batch_size, weights, precision), "precision": label})
    rows += _advunlearn_rows()
    judges = sum(judge_bytes().values())
    rows.append({**_eval_row(weights, judges, "no"), "precision": "fp32"})
    rows.append({**_eval_row(pipe.weight_bytes(2, 2), judges, "bf16"), "precision": "bf16 (--dtype bfloat16)"})
    return rows


def _cell(gpu: dict[str, Any]) -> str:
    if gpu["batch"] is None:
        shown = f"{gpu['peak_gib']:.1f}"
    elif gpu["grad_accum"] > 1:
        shown = f"{gpu['batch']} x {gpu['grad_accum']} ({gpu['peak_gib']:.1f})"
    else:
        shown = f"{gpu['batch']} ({gpu['peak_gib']:.1f})"
    return shown if gpu["fits"] else f"**{shown}, does not fit**"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table (GiB; a GPU cell: batch, or micro-batch x grad_accum, and the estimated peak)."""
    lines = ["| run | precision | fixed | per image | default batch: peak | 24 GB GPU | 40 GB GPU | 80 GB GPU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = "-" if r["per_image_gib"] is None else f"{r['per_image_gib']:.2f}"
        default = f"{r['default_peak_gib']:.1f}" if r["default_batch"] is None else \
            f"{r['default_batch']}: {r['default_peak_gib']:.1f}"
        lines.append(f"| {r['run']} | {r['precision']} | {r['fixed_gib']:.2f} | {per} | {default} | "
                     + " | ".join(_cell(r["gpus"][str(t)]) for t in GPUS_GIB) + " |")
    return "\n".join(lines)
