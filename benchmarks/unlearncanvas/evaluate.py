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

import hashlib
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline

from benchmarks.unlearncanvas.answer_set import (
    SamplerSettings, check_answer_folder, generate_answer_set, read_answer_set)
from benchmarks.unlearncanvas.config import EvalConfig, UsageError
from benchmarks.unlearncanvas.judges import Judges, load_judges
from benchmarks.unlearncanvas.metrics import efficiency_from_artifact
from benchmarks.unlearncanvas.report import write_report
from benchmarks.unlearncanvas.robustness import evaluate_robustness, examples_image
from benchmarks.unlearncanvas.scoring import score
from erase.artifacts import TransferWarning, read_record
from erase.attacks.tokens import check_vocabulary
from erase.loading import load_erased_pipeline
from erase.provenance import file_sha256, folder_hash, hardware, module_sha256
from pipelines.stable_diffusion import EMBEDDED_MODEL_NAME, load_pipeline, resolve_model

__all__ = ["SCHEMA", "EvalConfig", "Results", "UsageError", "describe_model", "evaluate", "evaluation_device",
           "load_model"]

SCHEMA = "erase.unlearncanvas-eval/1"


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
    schema: str = SCHEMA

    def to_json(self) -> dict[str, Any]:
        keys = ("schema", "label", "domain", "model", "targets", "summary", "answer_set", "classifier", "accuracy",
                "clip", "fid", "robustness", "efficiency", "hardware", "torch", "seconds")
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


# --------------------------------------------------------------------------- the model
def evaluation_device(device: str | None = None) -> tuple[Accelerator, torch.device]:
    """accelerate's process state and the device to use (``device`` when given, else accelerate's)."""
    accelerator = Accelerator(cpu=device == "cpu")
    return accelerator, torch.device(device) if device else accelerator.device


def describe_model(model: str | None = None, artifact: str | Path | None = None) -> dict[str, Any]:
    """What ``results.json`` says about the model, with the hashes that key its answer set."""
    if artifact is not None:
        record = read_record(artifact)
        return {"base": model or record.base_model.get("id"), "artifact": str(Path(artifact).absolute()),
                "method": record.method, "concept": record.concept, "artifact_config": record.config,
                "erase_json_sha256_16": file_sha256(Path(artifact) / "erase.json")[:16],
                "weights_sha256_16": folder_hash(artifact)}
    source = resolve_model(model)
    info = {"base": source if model else EMBEDDED_MODEL_NAME, "artifact": None, "method": None}
    if Path(source).is_dir():
        info["sha256_16"] = folder_hash(source)
    return info


def load_model(model: str | None = None, artifact: str | Path | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, progress: bool = True
               ) -> tuple[StableDiffusionPipeline, dict[str, Any]]:
    """(pipeline, model description): the base model, or the base named in ``artifact`` with the erasure applied.

    ``progress=False``: no loading bars (``--no-progress``).
    """
    info = describe_model(model, artifact)
    if artifact is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TransferWarning)
            pipe = load_erased_pipeline(artifact, device=device, dtype=dtype, model=model, progress=progress)
        transfer = [str(w.message) for w in caught if issubclass(w.category, TransferWarning)]
        for w in caught:
            if not issubclass(w.category, TransferWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if transfer:  # recorded with the results: these figures are of a transferred erasure
            info["transfer_warnings"] = transfer
            for message in transfer:
                print(f"warning: {message}", file=sys.stderr)
        return pipe, info
    return load_pipeline(model, device=device, dtype=dtype, progress=progress), info


def _in_memory_model(pipe: StableDiffusionPipeline) -> dict[str, Any]:
    """A pipeline given without a description: named by the hash of its weights (UNet, text encoder, VAE)."""
    h = "".join(module_sha256(getattr(pipe, n)) for n in ("unet", "text_encoder", "vae") if hasattr(pipe, n))
    return {"base": "in-memory pipeline", "artifact": None, "method": None,
            "sha256_16": hashlib.sha256(h.encode()).hexdigest()[:16]}


def _model_key(info: dict[str, Any]) -> str:
    """The answer set's model identity: base (+ its hash) and, for an artifact, its weights' hash.

    Weights, not erase.json (which holds run times): a rerun that reproduces the same weights reuses
    the answer set, any other artifact is refused.
    """
    key = str(info["base"]) + (f"@{info['sha256_16']}" if info.get("sha256_16") else "")
    if info.get("artifact"):
        key += f"+{info['artifact']}@{info['weights_sha256_16']}"
    return key


# --------------------------------------------------------------------------- the protocol
def evaluate(pipe: StableDiffusionPipeline | None, config: EvalConfig, model_info: dict[str, Any] | None = None,
             judges: Judges | None = None, started: float | None = None,
             base_pipe: StableDiffusionPipeline | None = None) -> Results:
    """Generate (or resume) the answer set with ``pipe``, score it, write the report to ``config.out``.

    ``pipe=None`` scores an existing answer set (``config.answer_dir``). ``model_info`` describes the
    model (``load_model``/``describe_model``; default: hashes of the pipeline's weights) and keys the
    answer set; ``judges`` may be loaded beforehand with ``load_judges`` (so bad judge paths fail
    before a model loads); ``started`` (``time.perf_counter()``) counts earlier work into the total.
    With ``config.attack`` every target is also attacked (``robustness.evaluate_robustness``); the target
    images come from ``base_pipe``, the un-erased model (default: ``pipe`` itself when it is a base model,
    else the base named in ``model_info``, loaded here).
    Every process of an ``accelerate launch`` calls this; each draws and scores its share, the main
    process writes the files, and every process returns the same ``Results``.
    """
    t_start = time.perf_counter() if started is None else started
    if pipe is None:
        if model_info and model_info.get("artifact"):
            raise UsageError("scoring a given answer set loads no model; drop the artifact (name the row with a label)")
        model_info = {"base": None, "artifact": None, "method": None, "note": "score-only: answer set given"}
    elif model_info is None:
        model_info = _in_memory_model(pipe)
    cfg = config.resolved(model_info.get("concept"))
    domain = cfg.spec
    attack = cfg.attack_config()
    if attack is not None:
        if pipe is None:
            raise UsageError("--attack needs the model: it cannot run on a given answer set (--score-only)")
        check_vocabulary(pipe.tokenizer, pipe.text_encoder)
    accelerator, device = evaluation_device(cfg.device)
    progress = cfg.progress and accelerator.is_local_main_process
    own_judges = judges is None
    judges = load_judges(cfg, device) if own_judges else judges
    try:
        if tuple(judges.classifier.themes) != domain.themes or tuple(judges.classifier.objects) != domain.objects:
            raise UsageError(f"the judges' labels do not match the {domain.name} domain")
        settings = SamplerSettings(steps=cfg.steps, guidance_scale=cfg.guidance, size=cfg.size,
                                   photo_phrase=cfg.photo_phrase, ext=cfg.ext, seeds=list(cfg.seeds))
        gen_info: dict[str, Any] = {"generated": 0, "seconds": 0.0}
        if pipe is not None:
            if accelerator.is_main_process:
                check_answer_folder(cfg.answer_dir, settings, _model_key(model_info))
            accelerator.wait_for_everyone()
            gen_info = generate_answer_set(pipe, cfg.answer_dir, domain, settings, _model_key(model_info),
                                           cfg.batch_size, accelerator.process_index, accelerator.num_processes,
                                           progress=progress)
            gen_info["processes"] = accelerator.num_processes
            accelerator.wait_for_everyone()
        answer = read_answer_set(cfg.answer_dir, domain, cfg.seeds, cfg.ext)
        t_score = time.perf_counter()
        scores = score(answer, domain, judges, cfg.targets, cfg.photo_phrase, progress, accelerator.process_index,
                       accelerator.num_processes, device)
        score_seconds = time.perf_counter() - t_score
        classifier_name = judges.classifier_name
        robustness = None
        if attack is not None:
            if base_pipe is None:
                base_pipe = (load_pipeline(model_info["base"], device=device, progress=cfg.progress)
                             if model_info.get("artifact") else pipe)
            robustness = evaluate_robustness(
                pipe, base_pipe, domain, list(cfg.targets), judges.classifier, cfg.attack, attack, list(cfg.seeds),
                cfg.attack_prompts, classifier_name, None if cfg.out is None else cfg.out / ".attack",
                _model_key(model_info), (accelerator.process_index, accelerator.num_processes), progress, answer,
                cfg.photo_phrase)
            by_target = {r["target"]: r for r in robustness["targets"]}
            for row in scores["targets"]:
                if row["target"] in by_target:
                    row["pre_ASR"], row["ASR"] = by_target[row["target"]]["pre_asr"], by_target[row["target"]]["asr"]
    finally:
        if own_judges:
            judges.close()
    label = cfg.label or model_info.get("method") or "base"
    results = Results(
        label=label, domain=domain.name, model=model_info, targets=scores["targets"], summary=scores["summary"],
        answer_set={"folder": str(cfg.answer_dir.absolute()), "images": len(answer),
                    "grid": f"{len(domain.themes)} themes (photo theme included) x {len(domain.objects)} objects "
                            f"x {len(cfg.seeds)} seeds",
                    "prompt_template": domain.prompt("{style}", "{object}"), "photo_phrase": cfg.photo_phrase,
                    "seeds": list(cfg.seeds), "sampler": f"{settings.scheduler} eta {settings.eta}",
                    "steps": cfg.steps, "guidance_scale": cfg.guidance, "size": cfg.size, "ext": cfg.ext, **gen_info},
        classifier={"name": classifier_name, "images": len(answer),
                    "images_per_theme": scores["accuracy"]["images_per_theme"],
                    "images_per_object": scores["accuracy"]["images_per_object"]},
        accuracy=scores["accuracy"], clip=scores.get("clip"), fid=scores.get("fid"), robustness=robustness,
        efficiency=efficiency_from_artifact(model_info.get("artifact")), hardware=hardware(), torch=torch.__version__,
        seconds={"generation": gen_info.get("seconds"), "scoring": round(score_seconds, 2),
                 "total": round(time.perf_counter() - t_start, 2), "torch_threads": torch.get_num_threads()})
    if cfg.out is not None and accelerator.is_main_process:
        examples = examples_image(pipe, base_pipe, robustness, cfg.steps, cfg.guidance) if robustness else None
        write_report(results.to_json(), answer, domain, cfg.out, cfg.grid_seed, examples)
    return results
