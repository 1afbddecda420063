"""Training checkpoints in safetensors: model, optimizer and RNG state, written atomically.

The project writes no pickles, so optimizer state is flattened to named tensors and its
non-tensor parts (step counters, hyperparameters) go to a JSON file beside them. A checkpoint
folder is written under a temporary name and renamed into place, so a kill mid-write never
leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
META = "state.json"


class CheckpointError(ValueError):
    """A checkpoint or weights file that is missing, unreadable or does not fit its model."""


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; any failure becomes a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own (non-OSError) error type on corrupt headers
        raise CheckpointError(f"corrupt safetensors file {path}: {str(err).splitlines()[0]}") from err


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """Split an optimizer's state dict into named tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            name = f"{prefix}.{pid}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optimizer") -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``folder`` atomically (temp folder, then rename)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / TENSORS)
    (tmp / META).write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint in ``folder``, or None when there is none (a ``.tmp`` leftover is ignored)."""
    folder = Path(folder)
    if not (folder / META).exists():
        old = folder.with_name(folder.name + ".old")  # killed between the two renames
        if (old / META).exists():
            folder = old
        else:
            return None
    try:
        meta = json.loads((folder / META).read_text())
    except ValueError as err:
        raise CheckpointError(f"corrupt checkpoint metadata {folder / META}: {err}") from err
    return read_tensors(folder / TENSORS), meta


MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


def save_model_folder(module: torch.nn.Module, folder: str | Path, config: dict[str, Any]) -> None:
    """A small model as ``model.safetensors`` + ``config.json`` (the project's own scorers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(module.state_dict(), folder / MODEL_WEIGHTS)
    (folder / MODEL_CONFIG).write_text(json.dumps(config, indent=1))


def load_model_folder(folder: str | Path, build: Callable[[dict[str, Any]], torch.nn.Module],
                      what: str) -> torch.nn.Module:
    """Rebuild a model with ``build(config)`` and load its weights strictly; errors name ``what``."""
    folder = Path(folder)
    if not (folder / MODEL_CONFIG).is_file() or not (folder / MODEL_WEIGHTS).is_file():
        raise CheckpointError(f"no {what} in {folder} (needs {MODEL_CONFIG} and {MODEL_WEIGHTS})")
    try:
        model = build(json.loads((folder / MODEL_CONFIG).read_text()))
        model.load_state_dict(read_tensors(folder / MODEL_WEIGHTS), strict=True)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"corrupt {what} in {folder}: {str(err).splitlines()[0]}") from err
    return model.eval()


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Load ``prefix.*`` tensors into ``module``, insisting that every key matches."""
    sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint tensors '{prefix}.*' do not fit {type(module).__name__}: "
                              f"{str(err).splitlines()[0]}") from err


def rng_tensors(generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if generator is not None:
        out["rng.generator"] = generator.get_state()
    return out


def load_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None:
        generator.set_state(tensors["rng.generator"])
