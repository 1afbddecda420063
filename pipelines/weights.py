"""Reading safetensors weights with one-line errors, and small model folders (weights + JSON config).

Everything the project loads goes through here, so a missing or corrupt file always reads the
same way to a user and nothing is ever unpickled. ``strict=True`` everywhere: a file that does not
fit its model is an error, never a partial load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


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


def save_model_folder(module: torch.nn.Module, folder: str | Path, config: dict[str, Any]) -> None:
    """A small model as ``model.safetensors`` + ``config.json`` (the project's own judges)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, folder / MODEL_WEIGHTS)
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
