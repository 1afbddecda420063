"""An erased model on disk: the changed component(s) plus ``erase.json``; the only reader/writer of both.

Layout of an artifact folder::

    erase.json                      the EraseRecord below (one schema for diffusion and generator artifacts)
    unet/config.json                a whole component (format "full"), saved with save_pretrained
    unet/diffusion_pytorch_model.safetensors
    unet/changed.safetensors        or only its trained tensors (format "partial"), when much smaller
    decoder/model.safetensors       a plain nn.Module component (a GAN/VAE sampler): its state dict
    salun_mask.safetensors          extra tensors a method keeps (e.g. SalUn's saliency mask)

The folder is built under a hidden temporary name beside the target and renamed into place at
the end, so an interrupted save never leaves something that looks like an artifact. Loading
applies the tensors onto the base model's own components with strict key checks, after checking
that the base is the one the artifact was made from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from erase.provenance import module_sha256
from pipelines.weights import CheckpointError, read_tensors

ERASE_JSON = "erase.json"
PARTIAL_FILE = "changed.safetensors"
FORMAT_VERSION = 3  # 3: a local base is recorded relative to the artifact (base_model.folder)
PARTIAL_BELOW = 0.25  # "auto" stores only the trained tensors when they are under 25% of the component
COMPONENT_FORMATS = ("full", "partial")


class ArtifactError(ValueError):
    """An artifact folder that cannot be written or read; the message is one line for the user."""


@dataclass
class EraseRecord:
    """The content of ``erase.json``; README.md ("The artifact") documents every key."""

    method: str  # registry name
    method_kind: str  # gradient | step | closed-form
    concept: str  # as the user gave it
    concept_name: str  # canonical name in its benchmark domain (or the text itself)
    kind: str  # style | object (diffusion), feature (generators)
    domain: str | None  # minicanvas | unlearncanvas | None
    config: dict[str, Any]  # every method option, after presets and overrides
    preset: dict[str, Any] | None  # {"name", "overrides"} when a world preset applied
    base_model: dict[str, Any]  # {"id", "type": diffusion|generator, "folder" for a local base: base_entry}
    seed: int
    trainer: dict[str, Any] | None  # TrainerConfig; None for a closed-form edit
    train: dict[str, Any]  # kind, steps, final_loss, resumed_from, first/last losses
    cost: dict[str, Any]  # seconds, peak memory (whole run), device, processes, threads, artifact_bytes
    run: dict[str, Any] = field(default_factory=dict)  # what the method decided while running
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # filled by save_artifact
    extra_files: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: Path) -> "EraseRecord":
        if not isinstance(data, dict):
            raise ArtifactError(f"{source} holds no JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"{source} lacks key {missing[0]!r} (format_version "
                                f"{data.get('format_version', '?')}; this erase reads {FORMAT_VERSION})")
        record = cls(**{k: v for k, v in data.items() if k in names})
        if not isinstance(record.components, dict) or not record.components:
            raise ArtifactError(f"{source} names no components")
        for name, entry in record.components.items():
            for key in ("format", "tensors"):
                if not isinstance(entry, dict) or key not in entry:
                    raise ArtifactError(f"{source}: component {name!r} lacks key {key!r}")
            if entry["format"] not in COMPONENT_FORMATS:
                raise ArtifactError(f"{source}: component {name!r} has format {entry['format']!r}; "
                                    f"known: {', '.join(COMPONENT_FORMATS)}")
        if not isinstance(record.base_model, dict) or "id" not in record.base_model:
            raise ArtifactError(f"{source}: base_model lacks key 'id'")
        return record


def base_entry(base_id: str, model_type: str, folder: Path | None, artifact_dir: Path) -> dict[str, Any]:
    """``erase.json``'s ``base_model``: a hub id or shipped name as it is; a user's model folder by its name
    and its path relative to the artifact (``folder``), so that an artifact names no folder of the machine it
    was made on and still finds its base where the two move together."""
    if folder is None:
        return {"id": base_id, "type": model_type}
    relative = Path(os.path.relpath(Path(folder).absolute(), Path(artifact_dir).absolute())).as_posix()
    return {"id": Path(folder).absolute().name, "type": model_type, "folder": relative}


def base_location(record: EraseRecord, artifact_dir: str | Path) -> str:
    """Where the recorded base loads from: ``folder`` taken from the artifact's own folder, else ``id`` (a hub
    id, a shipped name, or the absolute path an artifact of format_version 2 recorded)."""
    folder = record.base_model.get("folder")
    if folder is None:
        return str(record.base_model["id"])
    path = Path(os.path.normpath(Path(artifact_dir).absolute() / folder))
    if not path.is_dir():
        raise ArtifactError(f"{artifact_dir} was made on the model folder {folder} (relative to the artifact), "
                            f"which is not at {path}; name the base with --model")
    return str(path)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(out: str | Path, overwrite: bool = False, base_dir: str | Path | None = None) -> Path:
    """Fail early, before any training, when ``out`` cannot receive an artifact."""
    out = Path(out).expanduser().absolute()
    if base_dir is not None:
        base = Path(base_dir).absolute()
        if out == base or base in out.parents:
            raise ArtifactError(f"output {out} is inside the base model folder {base}; choose another folder")
    if out.exists():
        if not out.is_dir():
            raise ArtifactError(f"output {out} is a file; choose a folder")
        if (out / ERASE_JSON).exists():
            if not overwrite:
                raise ArtifactError(f"{out} already holds an artifact; pass --overwrite to replace it")
        elif any(out.iterdir()):
            raise ArtifactError(f"output folder {out} exists and is not empty (and holds no artifact)")
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise ArtifactError(f"cannot create {out}: {parent} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as err:
        raise ArtifactError(f"output {out} is not writable ({parent}: {err.strerror})") from None
    return out


def _save_full(module: nn.Module, folder: Path) -> None:
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(folder, safe_serialization=True)
    else:  # a plain nn.Module (e.g. a GAN generator): its state dict alone
        folder.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  folder / "model.safetensors")


def save_artifact(out: str | Path, components: dict[str, nn.Module], record: EraseRecord,
                  trained: list[str] | None = None, extra: dict[str, dict[str, torch.Tensor]] | None = None,
                  overwrite: bool = False, fmt: str = "auto", base_hashes: dict[str, str] | None = None
                  ) -> EraseRecord:
    """Write the artifact atomically; returns the record as written (components and size filled in).

    ``trained`` names the trained parameters as ``component.param``; with ``fmt="auto"`` a component
    is stored partially when those are under 25% of its tensors' size. ``base_hashes`` are the
    ``module_sha256`` of the components before the erasure (loading checks them).
    """
    if fmt not in ("auto", *COMPONENT_FORMATS):
        raise ArtifactError(f"artifact format must be auto, full or partial, got {fmt!r}")
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        record = dataclasses.replace(record, components={}, extra_files=sorted(f"{s}.safetensors" for s in extra or {}))
        for name, module in components.items():
            state = module.state_dict()
            changed = [n[len(name) + 1:] for n in (trained or []) if n.startswith(name + ".")]
            total = sum(t.numel() for t in state.values())
            part = sum(state[n].numel() for n in changed if n in state)
            use = fmt if fmt != "auto" else ("partial" if trained is not None and part < PARTIAL_BELOW * total
                                             else "full")
            if use == "partial":
                (tmp / name).mkdir()
                save_file({n: state[n].detach().cpu().contiguous() for n in changed}, tmp / name / PARTIAL_FILE)
                keys = sorted(changed)
            else:
                _save_full(module, tmp / name)
                keys = sorted(state)
            record.components[name] = {"format": use, "class": f"{type(module).__module__}.{type(module).__name__}",
                                       "tensors": keys if use == "partial" else len(keys),
                                       "base_sha256": (base_hashes or {}).get(name)}
        for stem, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / f"{stem}.safetensors")
        record.cost["artifact_bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        (tmp / ERASE_JSON).write_text(json.dumps(record.to_json(), indent=1, default=str))
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers create owner-only entries
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
        return record
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_record(artifact: str | Path) -> EraseRecord:
    """The artifact's ``erase.json`` as an ``EraseRecord``; anything malformed is one ``ArtifactError`` line."""
    artifact = Path(artifact)
    if not artifact.is_dir():
        raise ArtifactError(f"artifact folder {artifact} does not exist")
    path = artifact / ERASE_JSON
    if not path.is_file():
        raise ArtifactError(f"{artifact} is not an erase artifact (no {ERASE_JSON})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"corrupt {path}: {err}") from None
    return EraseRecord.from_json(data, path)


def _component_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    files = sorted({folder / f for f in json.loads(index[0].read_text())["weight_map"].values()}) if index \
        else sorted(folder.glob("*.safetensors"))
    if not files:
        raise ArtifactError(f"{folder} holds no .safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(read_tensors(f))
        except CheckpointError as err:
            raise ArtifactError(str(err)) from None
    return tensors


class TransferWarning(UserWarning):
    """An artifact applied onto a base other than the one it was made from (plug-in transfer)."""


def apply_artifact(artifact: str | Path, components: dict[str, nn.Module], verify_base: bool = True,
                   transfer: bool = False) -> EraseRecord:
    """Load the artifact's tensors into the given base components, in place; returns its record.

    Every tensor the component expects must be in the artifact (format "full"), or every tensor
    listed in ``erase.json`` must be present and fit (format "partial"); nothing loads leniently.
    ``transfer``: the caller chose another base on purpose (AdvUnlearn's plug-in use of an erased text
    encoder on another SD 1.x model); a base hash that differs is then a ``TransferWarning``, not an
    error, while shapes that differ are still refused.
    """
    artifact = Path(artifact)
    record = read_record(artifact)
    for name, entry in record.components.items():
        if components.get(name) is None:
            raise ArtifactError(f"the artifact changes component {name!r}, which the base model lacks")
        module = components[name]
        expected = entry.get("base_sha256")
        if verify_base and expected and module_sha256(module) != expected:
            if not transfer:
                raise ArtifactError(f"the base model's {name} differs from the one {artifact} was made from "
                                    f"(base {record.base_model.get('id')!r})")
            warnings.warn(TransferWarning(
                f"plug-in transfer: {artifact}'s {name} was made on {record.base_model.get('id')!r} and this base's "
                f"{name} differs; the erasure's measured figures do not carry over"), stacklevel=2)
        tensors = _component_tensors(artifact / name)
        state = module.state_dict()
        if entry["format"] == "partial":
            missing = sorted(set(entry["tensors"]) - set(tensors))
            if missing:
                raise ArtifactError(f"{artifact / name} lacks {len(missing)} tensor(s) listed in erase.json, "
                                    f"e.g. {missing[0]}")
            unknown = sorted(set(tensors) - set(state))
            if unknown:
                raise ArtifactError(f"{artifact / name} holds tensor {unknown[0]!r}, which the base {name} lacks")
            tensors = {**state, **tensors}
        bad = [k for k in tensors if k in state and tensors[k].shape != state[k].shape]
        if bad:
            raise ArtifactError(f"{artifact / name}: tensor {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, "
                                f"the base {name} expects {tuple(state[bad[0]].shape)}")
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ArtifactError(f"{artifact / name} does not fit the base {name}: "
                                f"{str(err).splitlines()[0]} {str(err).splitlines()[1:2]}") from None
    return record


def read_extra(artifact: str | Path, stem: str) -> dict[str, torch.Tensor]:
    """An extra tensor file of the artifact (e.g. ``salun_mask``)."""
    try:
        return read_tensors(Path(artifact) / f"{stem}.safetensors")
    except CheckpointError as err:
        raise ArtifactError(str(err)) from None
