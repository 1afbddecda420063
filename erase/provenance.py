"""What produced a number or an artifact: hardware, versions, and hashes of weights.

Every report and every ``erase.json`` names its hardware and the hashes of the weights it came
from, through these functions, so two results can be compared by content rather than by name.
"""

from __future__ import annotations

import hashlib
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

CHUNK = 1 << 20  # hash files in 1 MiB reads: an SD 1.5 UNet is 3.4 GB


def package_version(name: str = "erase") -> str:
    """Installed version of a distribution, or 'unknown' (e.g. running from a checkout without install)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the packages whose behaviour decides the numbers."""
    return {name: package_version(name) for name in ("erase", "torch", "diffusers", "transformers", "accelerate")}


def hardware() -> str:
    """The device a measurement ran on, with the CPU thread count (which changes CPU timings)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def relative_path(path: str | Path) -> str:
    """``path`` relative to the working directory, for files that travel: a result file never names the
    folders of the machine it was made on (``..`` steps where the path lies outside)."""
    return Path(os.path.relpath(Path(path).absolute(), Path.cwd())).as_posix()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def folder_hash(folder: str | Path) -> str:
    """sha256 (first 16 hex digits) over the safetensors files of a folder, with their relative names."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


def module_sha256(module: nn.Module) -> str:
    """Hash of a component's state (names, shapes, float32 values): identifies the base weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
