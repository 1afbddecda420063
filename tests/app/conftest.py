"""The app tests' artifact: the tiny model with its UNet's cross-attention keys scaled (a visible, known change)."""

import pytest
import torch

from erase.artifacts import EraseRecord, save_artifact
from erase.provenance import module_sha256


@pytest.fixture
def artifact(tiny_sd_dir, fresh_tiny_pipe, tmp_path):
    """An artifact of the tiny model whose UNet cross-attention keys are scaled: a visible, known change."""
    pipe = fresh_tiny_pipe
    base_hash = module_sha256(pipe.unet)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "attn2.to_k" in name:
                param.mul_(3.0)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    record = EraseRecord(method="esd", method_kind="gradient", concept="Candy", concept_name="Candy", kind="style",
                         domain="minicanvas", config={}, preset=None,
                         base_model={"id": str(tiny_sd_dir), "type": "diffusion"}, seed=0, trainer=None, train={},
                         cost={})
    save_artifact(tmp_path / "esd-candy", {"unet": pipe.unet}, record, trained, base_hashes={"unet": base_hash})
    return tmp_path / "esd-candy", pipe
