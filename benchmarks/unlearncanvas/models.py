"""The model an evaluation scores, named by content: base (its weights hash) and artifact (its weights hash).

``describe_model`` is what ``results.json`` says about the model; its ``key`` keys the answer set,
the base-model baseline cache and ``merge``'s duplicate check. Paths in it are relative to the
working directory, so result files never name the folders of the machine they were made on.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from erase.artifacts import ArtifactError, EraseRecord, TransferWarning, base_location, read_record
from erase.loading import load_erased_pipeline
from erase.provenance import file_sha256, folder_hash, module_sha256, relative_path
from pipelines.stable_diffusion import EMBEDDED_MODEL_NAME, load_pipeline, resolve_model


def _describe_base(model: str | None) -> dict[str, Any]:
    """The base model's name (a folder relative to the working directory) and, when local, its weights' hash."""
    if model is None or str(model) == EMBEDDED_MODEL_NAME:
        info: dict[str, Any] = {"base": EMBEDDED_MODEL_NAME}
    else:
        info = {"base": relative_path(model) if Path(model).expanduser().is_dir() else str(model)}
    try:
        source = resolve_model(model)
    except ValueError:  # a base named by an artifact made elsewhere: loading it reports the error
        return info
    if Path(source).is_dir():
        info["sha256_16"] = folder_hash(source)
    return info


def _recorded_base(record: EraseRecord, artifact: str | Path) -> str:
    """The base the artifact records; its bare name when its folder is not here (loading says so, in one line)."""
    try:
        return base_location(record, artifact)
    except ArtifactError:
        return str(record.base_model["id"])


def describe_model(model: str | None = None, artifact: str | Path | None = None) -> dict[str, Any]:
    """What ``results.json`` says about the model, with the hashes that key its answer set (``key``)."""
    if artifact is not None:
        record = read_record(artifact)
        info = {**_describe_base(model or _recorded_base(record, artifact)), "artifact": relative_path(artifact),
                "method": record.method, "concept": record.concept, "artifact_config": record.config,
                "erase_json_sha256_16": file_sha256(Path(artifact) / "erase.json")[:16],
                "weights_sha256_16": folder_hash(artifact)}
    else:
        info = {**_describe_base(model), "artifact": None, "method": None}
    info["key"] = model_key(info)
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


def in_memory_model(pipe: StableDiffusionPipeline) -> dict[str, Any]:
    """A pipeline given without a description: named by the hash of its weights (UNet, text encoder, VAE)."""
    h = "".join(module_sha256(getattr(pipe, n)) for n in ("unet", "text_encoder", "vae") if hasattr(pipe, n))
    info = {"base": "in-memory pipeline", "artifact": None, "method": None,
            "sha256_16": hashlib.sha256(h.encode()).hexdigest()[:16]}
    return {**info, "key": model_key(info)}


def model_key(info: dict[str, Any]) -> str:
    """The model's identity by content: the base (its hash when local, else its name) and, for an artifact,
    its weights' hash. It keys the answer set, the baseline cache and ``merge``'s duplicate check.

    Weights, not erase.json (which holds run times) nor folder names: a rerun that reproduces the same
    weights reuses the answer set, any other artifact is refused.
    """
    base = Path(str(info["base"])).name if info.get("sha256_16") else str(info["base"])
    key = base + (f"@{info['sha256_16']}" if info.get("sha256_16") else "")
    if info.get("artifact"):
        key += f"+artifact@{info['weights_sha256_16']}"
    return key


def base_key(model_key: str) -> str:
    """The base model's part of a model key."""
    return model_key.split("+", 1)[0]


def score_only_model(manifest: dict | None) -> dict[str, Any]:
    """The model of a given answer set, as its ``answer_set.json`` names it (unknown without one)."""
    info: dict[str, Any] = {"base": None, "artifact": None, "method": None,
                            "note": "score-only: answer set given" + ("; model from its answer_set.json"
                                                                      if manifest else ", without answer_set.json")}
    if manifest:
        key = manifest["model"]
        base, _, artifact = key.partition("+")
        info["base"], _, sha = base.partition("@")
        if sha:
            info["sha256_16"] = sha
        if artifact:
            info["weights_sha256_16"] = artifact.rpartition("@")[2]
        info["key"] = key
    return info
