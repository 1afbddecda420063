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
from typing import Any

import torch
from safetensors.torch import save_file

from pipelines.weights import CheckpointError, read_tensors

TENSORS = "state.safetensors"
META = "state.json"


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


def find_checkpoint(folder: str | Path) -> Path | None:
    """Where the complete checkpoint written to ``folder`` is, or None when there is none.

    ``folder`` itself, or its ``.old`` copy when a kill fell between the two renames of
    ``save_checkpoint``; a ``.tmp`` leftover is not a checkpoint.
    """
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    return folder if (folder / META).exists() else old if (old / META).exists() else None


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint in ``folder`` (see ``find_checkpoint``), or None when there is none."""
    folder = find_checkpoint(folder)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / META).read_text())
    except ValueError as err:
        raise CheckpointError(f"corrupt checkpoint metadata {folder / META}: {err}") from err
    return read_tensors(folder / TENSORS), meta


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
