"""Base model + artifact -> a ready model: a ``StableDiffusionPipeline`` or a generator.

The base is loaded in float32 so that its hash can be checked against the one recorded at
erasure time, then the artifact's tensors are loaded strictly (``erase.artifacts.apply_artifact``),
then the model is moved and cast. Errors are one-line ``ArtifactError`` / ``ModelLoadError`` /
``GeneratorError`` messages.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from erase.artifacts import ArtifactError, EraseRecord, apply_artifact, base_location, read_record
from pipelines.generators import GeneratorArtifact, load_generator
from pipelines.stable_diffusion import EMBEDDED_MODEL_NAME, load_pipeline


def base_id(record: EraseRecord, artifact_dir: str | os.PathLike,
            model: str | os.PathLike | None = None) -> str | None:
    """The base model to load: ``model`` when given, else the one the artifact records (None = embedded)."""
    if model is not None:
        return str(model)
    found = base_location(record, artifact_dir)
    return None if found == EMBEDDED_MODEL_NAME else found


def load_erased_pipeline(artifact_dir: str | os.PathLike, device: str | torch.device | None = None,
                         dtype: torch.dtype = torch.float32, model: str | os.PathLike | None = None,
                         progress: bool = True) -> StableDiffusionPipeline:
    """The base model named in the artifact's ``erase.json`` (or ``model``) with the erased components applied.

    A ``model`` other than the recorded base is a plug-in transfer (AdvUnlearn's erased text encoder on
    another SD 1.x model): components of other shapes are refused with one line, a base whose weights
    merely differ gets an ``erase.artifacts.TransferWarning``.
    ``progress=False``: no loading bars (``pipelines.stable_diffusion.load_pipeline``).
    """
    record = read_record(artifact_dir)
    if record.base_model.get("type", "diffusion") != "diffusion":
        raise ArtifactError(f"{artifact_dir} erases a {record.base_model.get('type')}, not a diffusion model")
    chosen = base_id(record, artifact_dir, model)
    pipe = load_pipeline(chosen, dtype=torch.float32, progress=progress)
    transfer = model is not None and not _same_base(chosen, record, artifact_dir)
    apply_artifact(artifact_dir, {name: getattr(pipe, name, None) for name in record.components}, transfer=transfer)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    if device is not None:
        pipe.to(device)
    return pipe


def _same_base(chosen: str | None, record: EraseRecord, artifact_dir: str | os.PathLike) -> bool:
    """Whether ``chosen`` names the base the artifact records (by id, or as the same folder)."""
    try:
        recorded = base_id(record, artifact_dir)
    except ArtifactError:  # the recorded folder is not here: another model was named, a transfer
        return False
    if chosen == recorded:
        return True
    if chosen is None or recorded is None:
        return False
    return Path(chosen).exists() and Path(recorded).exists() and Path(chosen).resolve() == Path(recorded).resolve()


def erased_copy(base: StableDiffusionPipeline, artifact_dir: str | os.PathLike) -> StableDiffusionPipeline:
    """A pipeline that shares the base's unchanged components and holds its own copy of the changed ones.

    For showing several artifacts on one base (the playground) without loading the base again.
    """
    record = read_record(artifact_dir)
    components = dict(base.components)
    changed = {name: copy.deepcopy(components.get(name)) for name in record.components}
    apply_artifact(artifact_dir, changed)
    components.update(changed)
    # Its own scheduler: set_timesteps mutates scheduler state, which two pipelines must not share.
    components["scheduler"] = DDIMScheduler.from_config(base.scheduler.config)
    pipe = StableDiffusionPipeline(**components)
    pipe.scheduler = components["scheduler"]  # the constructor may rewrite clip_sample; keep the base's
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_erased_generator(artifact_dir: str | os.PathLike, model: str | os.PathLike | None = None
                          ) -> GeneratorArtifact:
    """The base generator named in ``erase.json`` (or ``model``) with its unlearned sampler applied."""
    record = read_record(artifact_dir)
    if record.base_model.get("type") != "generator":
        raise ArtifactError(f"{artifact_dir} erases a {record.base_model.get('type', 'diffusion')} model, "
                            f"not a GAN/VAE generator")
    base = load_generator(model if model is not None else base_location(record, artifact_dir))
    apply_artifact(artifact_dir, {name: getattr(base.model, name, None) for name in record.components})
    return GeneratorArtifact(base.model.eval(), dict(base.config, unlearned={"artifact": str(artifact_dir)}),
                             Path(artifact_dir))

