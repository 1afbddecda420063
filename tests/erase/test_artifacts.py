import json

import numpy as np
import pytest
import torch

from erase.artifacts import ArtifactError, apply_artifact, check_output, module_sha256, save_artifact
from pipelines.stable_diffusion import generate, load_erased_pipeline, load_pipeline

PROMPT = ["A Fish image in Candy style."]


def _meta(tiny_sd_dir):
    return {"method": "test", "base_model": {"id": str(tiny_sd_dir)}}


@pytest.mark.parametrize("fmt", ["full", "partial"])
def test_zero_change_artifact_reproduces_the_base_and_a_change_is_applied(tiny_sd_dir, tmp_path, fmt):
    pipe = load_pipeline(tiny_sd_dir)
    base_img = generate(pipe, PROMPT, [5], steps=3)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    h = {"unet": module_sha256(pipe.unet)}
    save_artifact(tmp_path / "zero", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained, fmt=fmt, base_hashes=h)
    assert np.array_equal(generate(load_erased_pipeline(tmp_path / "zero"), PROMPT, [5], steps=3), base_img)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "attn2.to_k" in n:
                p.mul_(3.0)
    meta = save_artifact(tmp_path / "art", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained, fmt=fmt, base_hashes=h)
    assert meta["components"]["unet"]["format"] == fmt
    assert meta["cost"]["artifact_bytes"] > 0
    assert all(p.suffix in (".json", ".safetensors") for p in (tmp_path / "art").rglob("*") if p.is_file())
    erased = load_erased_pipeline(tmp_path / "art")
    assert np.array_equal(generate(erased, PROMPT, [5], steps=3), generate(pipe, PROMPT, [5], steps=3))
    assert not np.array_equal(generate(erased, PROMPT, [5], steps=3), base_img)


def test_loading_checks_tensors_and_base(tiny_sd_dir, tmp_path):
    pipe = load_pipeline(tiny_sd_dir)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    save_artifact(tmp_path / "a", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained,
                  base_hashes={"unet": module_sha256(pipe.unet)})
    meta_path = tmp_path / "a" / "erase.json"
    meta = json.loads(meta_path.read_text())
    meta["components"]["unet"]["tensors"].append("down_blocks.9.nothing.weight")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks 1 tensor"):
        apply_artifact(tmp_path / "a", {"unet": load_pipeline(tiny_sd_dir).unet})
    other = load_pipeline(tiny_sd_dir).unet
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    meta["components"]["unet"]["tensors"].pop()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="differs from the one"):
        apply_artifact(tmp_path / "a", {"unet": other})
    with pytest.raises(ArtifactError, match="no erase.json"):
        load_erased_pipeline(tiny_sd_dir)
    # a full component missing one tensor is refused, not loaded leniently
    save_artifact(tmp_path / "f", {"unet": pipe.unet}, _meta(tiny_sd_dir), fmt="full")
    from safetensors.torch import load_file, save_file
    f = next((tmp_path / "f" / "unet").glob("*.safetensors"))
    t = load_file(f)
    t.pop(sorted(t)[0])
    save_file(t, f)
    with pytest.raises(ArtifactError, match="does not fit"):
        load_erased_pipeline(tmp_path / "f")


def test_output_checks_and_nothing_half_written(tiny_sd_dir, tmp_path):
    pipe = load_pipeline(tiny_sd_dir)
    save_artifact(tmp_path / "a", {"unet": pipe.unet}, _meta(tiny_sd_dir))
    with pytest.raises(ArtifactError, match="already holds an artifact"):
        check_output(tmp_path / "a")
    check_output(tmp_path / "a", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a folder|is a file"):
        check_output(tmp_path / "file" / "sub")
    with pytest.raises(ArtifactError, match="inside the base model folder"):
        check_output(tiny_sd_dir / "erased", base_dir=tiny_sd_dir)

    class Boom(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_artifact(tmp_path / "b", {"unet": Boom()}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file", "tiny-sd"]
