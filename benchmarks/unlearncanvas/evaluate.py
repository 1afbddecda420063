"""``evaluate(pipe, EvalConfig) -> Results``: the UnlearnCanvas protocol as a Python API.

    from benchmarks.unlearncanvas.evaluate import EvalConfig, evaluate, load_model

    pipe, info = load_model(artifact="erased/esd-candy")
    results = evaluate(pipe, EvalConfig(out="outputs/uc-esd-candy"), model_info=info)
    results.target("Candy")["UA"], results.summary, results.to_json()   # = results.json

Steps: answer set (generated, resumable, sharded over processes) -> style/object classifier ->
UA, IRA, CRA per target and the per-concept accuracy table -> CLIP zero-shot removal accuracy
and CLIP score -> Frechet distance to the protocol's reference set -> efficiency from the
artifact's record. ``unlearncanvas-eval`` (``run.py``) is a thin command line over this module.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline
from PIL import Image

from benchmarks.unlearncanvas.answer_set import (
    SamplerSettings, check_answer_folder, generate_answer_set, read_answer_set)
from benchmarks.unlearncanvas.baseline import (
    add_baseline, baseline_key, compute_baseline, default_cache, describe, read_baseline, write_baseline)
from benchmarks.unlearncanvas.config import DEFAULT_BATCH, EvalConfig, UsageError
from benchmarks.unlearncanvas.judges import Judges, load_judges
from benchmarks.unlearncanvas.metrics import efficiency_from_artifact, summarize
from benchmarks.unlearncanvas.models import base_key, describe_model, in_memory_model, load_model, score_only_model
from benchmarks.unlearncanvas.report import write_report
from benchmarks.unlearncanvas.robustness import evaluate_robustness, examples_image
from benchmarks.unlearncanvas.scoring import score
from erase.attacks.tokens import check_vocabulary
from erase.memory import BatchPlan, free_device_bytes, plan_eval_batch
from erase.provenance import hardware, relative_path
from pipelines.stable_diffusion import DECODE_BATCH, load_pipeline

__all__ = ["SCHEMA", "EvalConfig", "Results", "UsageError", "describe_model", "evaluate", "evaluation_device",
           "load_model"]

SCHEMA = "erase.unlearncanvas-eval/2"


@dataclass
class Results:
    """One evaluation; ``to_json()`` is the content of ``results.json`` (README documents every key)."""

    label: str
    domain: str
    model: dict[str, Any]
    targets: list[dict[str, Any]]  # per target: target, kind, UA, IRA, CRA, forget/retain images, CLIP, FID
    summary: dict[str, Any]  # means per target kind (metrics.summarize)
    answer_set: dict[str, Any]
    classifier: dict[str, Any]
    accuracy: dict[str, Any]  # metrics.AccuracyTable.to_json()
    clip: dict[str, Any] | None
    fid: dict[str, Any] | None
    efficiency: dict[str, Any] | None
    hardware: str
    torch: str
    seconds: dict[str, Any]
    robustness: dict[str, Any] | None = None  # robustness.evaluate_robustness, with --attack
    comparable: dict[str, Any] | None = None  # what two results must share to sit in one table (leaderboard)
    schema: str = SCHEMA

    def to_json(self) -> dict[str, Any]:
        keys = ("schema", "label", "domain", "model", "targets", "summary", "answer_set", "classifier", "accuracy",
                "clip", "fid", "robustness", "efficiency", "comparable", "hardware", "torch", "seconds")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Results":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def target(self, name: str) -> dict[str, Any]:
        """The row of one target (its canonical name, or as given with spaces or another case)."""
        key = name.strip().replace(" ", "_").lower()
        for row in self.targets:
            if row["target"].lower() == key:
                return row
        raise KeyError(f"{name!r} was not a target of this evaluation ({', '.join(r['target'] for r in self.targets)})")


def evaluation_device(device: str | None = None) -> tuple[Accelerator, torch.device]:
    """accelerate's process state and the device to use (``device`` when given, else accelerate's)."""
    accelerator = Accelerator(cpu=device == "cpu")
    return accelerator, torch.device(device) if device else accelerator.device


# --------------------------------------------------------------------------- the protocol
def evaluate(pipe: StableDiffusionPipeline | None, config: EvalConfig, model_info: dict[str, Any] | None = None,
             judges: Judges | None = None, started: float | None = None,
             base_pipe: StableDiffusionPipeline | None = None) -> Results:
    """Generate (or resume) the answer set with ``pipe``, score it, write the report to ``config.out``.

    ``pipe=None`` scores an existing answer set (``config.answer_dir``): its sampler settings, wording,
    grid and model identity come from its ``answer_set.json`` (``EvalConfig.from_manifest``). ``model_info``
    describes the model (``load_model``/``describe_model``; default: hashes of the pipeline's weights) and
    keys the answer set; ``judges`` may be loaded beforehand with ``load_judges`` (so bad judge paths fail
    before a model loads); ``started`` (``time.perf_counter()``) counts earlier work into the total.
    With CLIP, the base model's figures for the same targets and settings are added beside this model's
    (``baseline``; cached per base model). With ``config.attack`` every target is also attacked
    (``robustness.evaluate_robustness``). Both need the un-erased model: ``base_pipe`` (default: ``pipe``
    itself when it is a base model, else the base named in ``model_info``, loaded here when needed).
    Every process of an ``accelerate launch`` calls this; each draws and scores its share, the main
    process writes the files, and every process returns the same ``Results``.
    """
    t_start = time.perf_counter() if started is None else started
    manifest = None
    if pipe is None:
        if model_info and model_info.get("artifact"):
            raise UsageError("scoring a given answer set loads no model; drop the artifact (name the row with a label)")
        manifest = config.answer_manifest()
        config = config.from_manifest(manifest)
        model_info = score_only_model(manifest)
    elif model_info is None:
        model_info = in_memory_model(pipe)
    cfg = config.resolved(model_info.get("concept"))
    domain = cfg.spec
    attack = cfg.attack_config()
    if attack is not None:
        if pipe is None:
            raise UsageError("--attack needs the model: it cannot run on a given answer set (--score-only)")
        check_vocabulary(pipe.tokenizer, pipe.text_encoder)
    accelerator, device = evaluation_device(cfg.device)
    progress = cfg.progress and accelerator.is_local_main_process
    process = (accelerator.process_index, accelerator.num_processes)
    judges = load_judges(cfg, device) if judges is None else judges
    if tuple(judges.classifier.themes) != domain.themes or tuple(judges.classifier.objects) != domain.objects:
        raise UsageError(f"the judges' labels do not match the {domain.name} domain")
    settings = SamplerSettings(steps=cfg.steps, guidance_scale=cfg.guidance, size=cfg.size,
                               photo_phrase=cfg.photo_phrase, ext=cfg.ext, seeds=list(cfg.seeds),
                               themes=None if cfg.themes == list(domain.themes) else list(cfg.themes),
                               objects=None if cfg.objects == list(domain.objects) else list(cfg.objects))
    if manifest is not None:  # the answer set's own sampler (scheduler, eta) is what its images were made with
        settings = dataclasses.replace(settings, scheduler=manifest.get("scheduler", settings.scheduler),
                                       eta=manifest.get("eta", settings.eta))
    key = model_info.get("key")
    plan = batch_plan(pipe, cfg, device)
    cfg = dataclasses.replace(cfg, batch_size=plan.batch)
    gen_info: dict[str, Any] = {"generated": 0, "seconds": 0.0}
    if pipe is not None:
        if accelerator.is_main_process:
            check_answer_folder(cfg.answer_dir, settings, key)
        accelerator.wait_for_everyone()
        gen_info = generate_answer_set(pipe, cfg.answer_dir, domain, settings, key, cfg.batch_size, *process,
                                       progress=progress)
        gen_info["processes"] = accelerator.num_processes
        accelerator.wait_for_everyone()
    gen_info["batch"] = plan.to_json()
    answer = read_answer_set(cfg.answer_dir, domain, cfg.seeds, cfg.ext, settings.themes, settings.objects)
    t_score = time.perf_counter()
    scores = score(answer, domain, judges, cfg.targets, cfg.photo_phrase, progress, *process, device)
    score_seconds = time.perf_counter() - t_score
    if scores.get("clip") is not None:
        scores["clip"]["baseline"], base_pipe = _baseline(pipe, base_pipe, model_info, cfg, settings, judges,
                                                          scores, accelerator, device, progress)
    robustness = None
    if attack is not None:
        if base_pipe is None:
            base_pipe = (load_pipeline(model_info["base"], device=device, progress=cfg.progress)
                         if model_info.get("artifact") else pipe)
        robustness = evaluate_robustness(
            pipe, base_pipe, domain, list(cfg.targets), judges.classifier, cfg.attack, attack, list(cfg.seeds),
            cfg.attack_prompts, judges.classifier_name, None if cfg.out is None else cfg.out / ".attack",
            key, process, progress, answer, cfg.photo_phrase)
        by_target = {r["target"]: r for r in robustness["targets"]}
        for row in scores["targets"]:
            if row["target"] in by_target:
                row["pre_ASR"], row["ASR"] = by_target[row["target"]]["pre_asr"], by_target[row["target"]]["asr"]
    summary = summarize(scores["targets"])  # after the base figures and ASR joined the rows
    with Image.open(answer.paths[0]) as im:
        image_size = im.size[0]
    comparable = {"domain": domain.name, "protocol": cfg.subset is None, "seeds": list(cfg.seeds),
                  "themes": list(cfg.themes), "objects": list(cfg.objects),
                  "sampler": {"scheduler": settings.scheduler, "eta": settings.eta, "steps": cfg.steps,
                              "guidance_scale": cfg.guidance, "image_size": image_size,
                              "prompt_template": domain.prompt("{style}", "{object}"),
                              "photo_phrase": cfg.photo_phrase},
                  "classifier_sha256_16": judges.hashes.get("classifier"), "clip_sha256_16": judges.hashes.get("clip"),
                  "fid_features_sha256_16": judges.hashes.get("fid_features"),
                  "fid_reference_sha256_16": judges.hashes.get("fid_reference"),
                  "attack": None if robustness is None else {"attack": robustness["attack"],
                                                             "config": robustness["config"]}}
    label = cfg.label or model_info.get("method") or "base"
    results = Results(
        label=label, domain=domain.name, model=model_info, targets=scores["targets"], summary=summary,
        answer_set={"folder": relative_path(cfg.answer_dir), "images": len(answer),
                    "grid": f"{len(cfg.themes)} themes (photo theme included) x {len(cfg.objects)} objects "
                            f"x {len(cfg.seeds)} seeds", "subset": cfg.subset,
                    "prompt_template": domain.prompt("{style}", "{object}"), "photo_phrase": cfg.photo_phrase,
                    "seeds": list(cfg.seeds), "sampler": f"{settings.scheduler} eta {settings.eta}",
                    "steps": cfg.steps, "guidance_scale": cfg.guidance, "size": cfg.size, "ext": cfg.ext,
                    "settings_from": "answer_set.json" if manifest else ("the command line" if pipe is None
                                                                         else "this run"), **gen_info},
        classifier={"name": judges.classifier_name, "images": len(answer),
                    "images_per_theme": scores["accuracy"]["images_per_theme"],
                    "images_per_object": scores["accuracy"]["images_per_object"]},
        accuracy=scores["accuracy"], clip=scores.get("clip"), fid=scores.get("fid"), robustness=robustness,
        efficiency=efficiency_from_artifact(model_info.get("artifact")), comparable=comparable, hardware=hardware(),
        torch=torch.__version__,
        seconds={"generation": gen_info.get("seconds"), "scoring": round(score_seconds, 2),
                 "total": round(time.perf_counter() - t_start, 2), "torch_threads": torch.get_num_threads()})
    if cfg.out is not None and accelerator.is_main_process:
        examples = examples_image(pipe, base_pipe, robustness, cfg.steps, cfg.guidance) if robustness else None
        write_report(results.to_json(), answer, domain, cfg.out, cfg.grid_seed, examples)
    return results


def batch_plan(pipe: StableDiffusionPipeline | None, cfg: EvalConfig, device: torch.device) -> BatchPlan:
    """Images per generate call: ``--batch-size``, else 64 on the CPU, else what the GPU's free memory (read
    with the model and judges loaded) holds by ``erase.memory``'s estimate, at most 64."""
    if pipe is None:
        return plan_eval_batch(DEFAULT_BATCH, cfg.batch_size, None, {}, 0)
    latent = (cfg.size or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.unet.dtype, "no")
    return plan_eval_batch(DEFAULT_BATCH, cfg.batch_size, free_device_bytes(device), pipe.unet.config, latent,
                           precision, DECODE_BATCH)


def _baseline(pipe, base_pipe, model_info: dict[str, Any], cfg: EvalConfig, settings: SamplerSettings,
              judges: Judges, scores: dict, accelerator: Accelerator, device: torch.device, progress: bool
              ) -> tuple[dict[str, Any], StableDiffusionPipeline | None]:
    """Add the base model's figures to every target row; returns ``clip.baseline`` and the base pipeline
    (loaded here when the cache lacks it, and handed on to the attack)."""
    if not cfg.baseline or model_info.get("key") is None:
        why = "--no-baseline" if not cfg.baseline else "the answer set names no model (no answer_set.json)"
        return {"source": f"not computed ({why})"}, base_pipe
    cache = default_cache() if cfg.baseline_cache is None else Path(cfg.baseline_cache)
    key = baseline_key(base_key(model_info["key"]), cfg.spec, settings, judges)
    if base_key(model_info["key"]) == model_info["key"]:  # the base model itself: its counts are the baseline
        if accelerator.is_main_process:
            write_baseline(cache, key, scores["cells"])
        add_baseline(scores["targets"], scores["cells"], cfg.spec)
        return describe("this evaluation (the base model itself)", key, cache), base_pipe
    cells = read_baseline(cache, key)
    source = "cache"
    if cells is None:
        if pipe is None:
            return {"source": "not computed (score-only and no cached baseline for this base model; evaluate "
                              "the base model once with the same settings)", "model": key["model"]}, base_pipe
        if base_pipe is None:
            base_pipe = load_pipeline(model_info["base"], device=device, progress=cfg.progress)
        cells = compute_baseline(base_pipe, cache, key, cfg.spec, settings, judges, cfg.batch_size,
                                 (accelerator.process_index, accelerator.num_processes), accelerator, progress, device)
        source = "computed in this run, now cached"
    add_baseline(scores["targets"], cells, cfg.spec)
    return describe(source, key, cache), base_pipe
