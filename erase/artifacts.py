"""An erased model on disk: the changed component(s) in diffusers/transformers format plus ``erase.json``.

Layout of an artifact folder::

    erase.json                      method, config, concept, base model id and hashes, version, cost
    unet/config.json                a whole component (format "full"), saved with save_pretrained
    unet/diffusion_pytorch_model.safetensors
    unet/changed.safetensors        or only its trained tensors (format "partial"), when much smaller
    salun_mask.safetensors          extra tensors a method keeps (e.g. SalUn's saliency mask)

The folder is built under a hidden temporary name beside the target and renamed into place at
the end, so an interrupted save never leaves something that looks like an artifact. Loading
applies the tensors onto the base model's own components with strict key checks, after checking
that the base is the one the artifact was made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from erase.checkpoint import CheckpointError, read_tensors

ERASE_JSON = "erase.json"
PARTIAL_FILE = "changed.safetensors"
FORMAT_VERSION = 1
PARTIAL_BELOW = 0.25  # "auto" stores only the trained tensors when they are under 25% of the component


class ArtifactError(ValueError):
    """An artifact folder that cannot be written or read; the message is one line for the user."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("erase")
    except Exception:  # not installed (running from a checkout)
        return "0.1.0"


def module_sha256(module: nn.Module) -> str:
    """Hash of a component's state (names, shapes, float32 values): identifies the base weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


def save_artifact(out: str | Path, components: dict[str, nn.Module], metadata: dict[str, Any],
                  trained: list[str] | None = None, extra: dict[str, dict[str, torch.Tensor]] | None = None,
                  overwrite: bool = False, fmt: str = "auto", base_hashes: dict[str, str] | None = None) -> dict:
    """Write the artifact atomically and return the ``erase.json`` content.

    ``trained`` names the trained parameters as ``component.param``; with ``fmt="auto"`` a component
    is stored partially when those are under 25% of its tensors' size. ``base_hashes`` are the
    ``module_sha256`` of the components before training (loading checks them).
    """
    if fmt not in ("auto", "full", "partial"):
        raise ArtifactError(f"artifact format must be auto, full or partial, got {fmt!r}")
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        entries = {}
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
            entries[name] = {"format": use, "class": f"{type(module).__module__}.{type(module).__name__}",
                             "tensors": keys if use == "partial" else len(keys),
                             "base_sha256": (base_hashes or {}).get(name)}
        for stem, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / f"{stem}.safetensors")
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        meta = dict(metadata, format_version=FORMAT_VERSION, erase_version=package_version(),
                    components=entries, extra_files=sorted(f"{s}.safetensors" for s in (extra or {})))
        meta.setdefault("cost", {})["artifact_bytes"] = size
        (tmp / ERASE_JSON).write_text(json.dumps(meta, indent=1, default=str))
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
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_metadata(artifact: str | Path) -> dict:
    artifact = Path(artifact)
    if not artifact.is_dir():
        raise ArtifactError(f"artifact folder {artifact} does not exist")
    path = artifact / ERASE_JSON
    if not path.is_file():
        raise ArtifactError(f"{artifact} is not an erase artifact (no {ERASE_JSON})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise ArtifactError(f"corrupt {path}: {err}") from None
    if not isinstance(meta.get("components"), dict) or not meta["components"]:
        raise ArtifactError(f"{path} names no components")
    return meta


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


def apply_artifact(artifact: str | Path, components: dict[str, nn.Module], verify_base: bool = True) -> dict:
    """Load the artifact's tensors into the given base components, in place; returns ``erase.json``.

    Every tensor the component expects must be in the artifact (format "full"), or every tensor
    listed in ``erase.json`` must be present and fit (format "partial"); nothing loads leniently.
    """
    artifact = Path(artifact)
    meta = read_metadata(artifact)
    for name, entry in meta["components"].items():
        if components.get(name) is None:
            raise ArtifactError(f"the artifact changes component {name!r}, which the base model lacks")
        module = components[name]
        expected = entry.get("base_sha256")
        if verify_base and expected and module_sha256(module) != expected:
            raise ArtifactError(f"the base model's {name} differs from the one {artifact} was made from "
                                f"(base {meta.get('base_model', {}).get('id')!r})")
        tensors = _component_tensors(artifact / name)
        state = module.state_dict()
        if entry["format"] == "partial":
            listed = set(entry["tensors"])
            missing = sorted(listed - set(tensors))
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
    return meta


def read_extra(artifact: str | Path, stem: str) -> dict[str, torch.Tensor]:
    """An extra tensor file of the artifact (e.g. ``salun_mask``)."""
    try:
        return read_tensors(Path(artifact) / f"{stem}.safetensors")
    except CheckpointError as err:
        raise ArtifactError(str(err)) from None
