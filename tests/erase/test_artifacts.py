import copy
import json

import numpy as np
import pytest
import torch

from safetensors.torch import load_file, save_file

from erase.artifacts import ArtifactError, EraseRecord, apply_artifact, check_output, read_record, save_artifact
from erase.loading import load_erased_pipeline
from erase.provenance import module_sha256
from pipelines.stable_diffusion import generate

PROMPT = ["A Fish image in Candy style."]


def _meta(tiny_sd_dir) -> EraseRecord:
    return EraseRecord(method="test", method_kind="gradient", concept="Candy", concept_name="Candy", kind="style",
                       domain="minicanvas", config={}, preset=None, base_model={"id": str(tiny_sd_dir),
                                                                                "type": "diffusion"},
                       seed=0, trainer=None, train={}, cost={})


@pytest.mark.parametrize("fmt", ["full", "partial"])
def test_zero_change_artifact_reproduces_the_base_and_a_change_is_applied(tiny_sd_dir, fresh_tiny_pipe, tmp_path,
                                                                         fmt):
    pipe = fresh_tiny_pipe
    base_img = generate(pipe, PROMPT, [5], steps=3)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    h = {"unet": module_sha256(pipe.unet)}
    save_artifact(tmp_path / "zero", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained, fmt=fmt, base_hashes=h)
    assert np.array_equal(generate(load_erased_pipeline(tmp_path / "zero"), PROMPT, [5], steps=3), base_img)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "attn2.to_k" in n:
                p.mul_(3.0)
    record = save_artifact(tmp_path / "art", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained, fmt=fmt,
                           base_hashes=h)
    assert record.components["unet"]["format"] == fmt and read_record(tmp_path / "art") == record
    assert record.cost["artifact_bytes"] > 0
    assert all(p.suffix in (".json", ".safetensors") for p in (tmp_path / "art").rglob("*") if p.is_file())
    erased = load_erased_pipeline(tmp_path / "art")
    assert np.array_equal(generate(erased, PROMPT, [5], steps=3), generate(pipe, PROMPT, [5], steps=3))
    assert not np.array_equal(generate(erased, PROMPT, [5], steps=3), base_img)


def test_the_readme_snippet_loads_a_partial_artifact_with_plain_diffusers(tiny_sd_dir, fresh_tiny_pipe, tmp_path):
    """README "Erasing a concept": a user without this package loads ESD-x's partial artifact in a few lines."""
    from diffusers import StableDiffusionPipeline

    pipe = fresh_tiny_pipe
    h = {"unet": module_sha256(pipe.unet)}
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "attn2.to_k" in n:
                p.mul_(3.0)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    save_artifact(tmp_path / "art", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained, fmt="partial", base_hashes=h)
    # the snippet, as README gives it (the base is the tiny model's folder here)
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    changed = load_file(tmp_path / "art" / "unet" / "changed.safetensors")
    state = plain.unet.state_dict()
    assert set(changed) <= set(state), "not an artifact of this base"
    state.update(changed)
    plain.unet.load_state_dict(state)
    # the same UNet as load_erased_pipeline's (compared by content) and the same images
    erased = load_erased_pipeline(tmp_path / "art")
    assert module_sha256(plain.unet) == module_sha256(erased.unet)
    assert len(changed) == len(trained) < len(state)
    want, got = generate(erased, PROMPT, [5], steps=3), generate(plain, PROMPT, [5], steps=3)
    assert np.abs(want.astype(int) - got.astype(int)).max() <= 1  # one grey level


def test_loading_checks_tensors_and_base(tiny_sd_dir, tiny_pipe, tmp_path):
    pipe = tiny_pipe
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    save_artifact(tmp_path / "a", {"unet": pipe.unet}, _meta(tiny_sd_dir), trained,
                  base_hashes={"unet": module_sha256(pipe.unet)})
    meta_path = tmp_path / "a" / "erase.json"
    meta = json.loads(meta_path.read_text())
    meta["components"]["unet"]["tensors"].append("down_blocks.9.nothing.weight")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks 1 tensor"):
        apply_artifact(tmp_path / "a", {"unet": copy.deepcopy(tiny_pipe.unet)})
    other = copy.deepcopy(tiny_pipe.unet)
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
    f = next((tmp_path / "f" / "unet").glob("*.safetensors"))
    t = load_file(f)
    t.pop(sorted(t)[0])
    save_file(t, f)
    with pytest.raises(ArtifactError, match="does not fit"):
        load_erased_pipeline(tmp_path / "f")


def test_output_checks_and_nothing_half_written(tiny_sd_dir, tiny_pipe, tmp_path):
    pipe = tiny_pipe
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
        save_artifact(tmp_path / "b", {"unet": Boom()}, _meta(tiny_sd_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file"]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("method"), "lacks key 'method'"),
    (lambda d: d["components"]["unet"].pop("format"), "component 'unet' lacks key 'format'"),
    (lambda d: d["components"]["unet"].update(format="zip"), "has format 'zip'"),
    (lambda d: d.update(components={}), "names no components"),
    (lambda d: d["base_model"].pop("id"), "base_model lacks key 'id'"),
])
def test_hand_edited_erase_json_is_one_line_naming_file_and_key(tiny_sd_dir, tiny_pipe, tmp_path, edit, message):
    save_artifact(tmp_path / "a", {"unet": tiny_pipe.unet}, _meta(tiny_sd_dir))
    path = tmp_path / "a" / "erase.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message) as err:
        read_record(tmp_path / "a")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
