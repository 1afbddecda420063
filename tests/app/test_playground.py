import numpy as np
import pytest
import torch

from app.playground import Playground, build_app, build_parser, example_prompts, main
from erase.artifacts import ArtifactError, module_sha256, save_artifact
from pipelines.stable_diffusion import generate, load_pipeline

PROMPT = "A Fish image in Candy style."


@pytest.fixture
def artifact(tiny_sd_dir, tmp_path):
    """An artifact whose UNet cross-attention keys are scaled: a visible, known change."""
    pipe = load_pipeline(tiny_sd_dir)
    base_hash = module_sha256(pipe.unet)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "attn2.to_k" in name:
                param.mul_(3.0)
    trained = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    meta = {"method": "esd", "concept": "Candy", "kind": "style", "base_model": {"id": str(tiny_sd_dir)}}
    save_artifact(tmp_path / "esd-candy", {"unet": pipe.unet}, meta, trained, base_hashes={"unet": base_hash})
    return tmp_path / "esd-candy", pipe


def test_compare_shows_the_base_and_the_erased_model_from_one_seed(tiny_sd_dir, artifact):
    folder, erased_pipe = artifact
    playground = Playground(None, [folder])  # base taken from erase.json
    label = next(iter(playground.erased))
    original, erased, caption = playground.compare(PROMPT, label, 7, 3, 5.0)
    base_img = generate(load_pipeline(tiny_sd_dir), [PROMPT], [7], steps=3, guidance_scale=5.0)[0]
    want_erased = generate(erased_pipe, [PROMPT], [7], steps=3, guidance_scale=5.0)[0]
    scale = original.width // base_img.shape[1]
    assert original.width >= 256 and scale > 1
    assert np.array_equal(np.asarray(original)[::scale, ::scale], base_img)
    assert np.array_equal(np.asarray(erased)[::scale, ::scale], want_erased)
    assert not np.array_equal(base_img, want_erased)
    assert "seed 7" in caption and "'Candy'" in caption
    # the erased copy did not leak into the shared base
    assert module_sha256(playground.base.unet) == module_sha256(load_pipeline(tiny_sd_dir).unet)
    with pytest.raises(ValueError, match="prompt"):
        playground.compare("  ", label, 7, 3, 5.0)
    with pytest.raises(ValueError, match="steps"):
        playground.compare(PROMPT, label, 7, 0, 5.0)


def test_app_builds_and_listens_on_localhost_by_default(artifact):
    import gradio as gr

    demo = build_app(Playground(None, [artifact[0]]))
    assert isinstance(demo, gr.Blocks)
    assert build_parser().parse_args(["--artifact", "x"]).host == "127.0.0.1"


def test_bad_artifacts_give_one_line_errors(tmp_path, capsys):
    assert main(["--artifact", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    with pytest.raises(ArtifactError):
        Playground(None, [])


def test_example_prompts_name_the_concept_and_a_retained_one():
    style = example_prompts("Candy", "style")
    assert "Candy" in style[0] and all("Candy" not in p for p in style[2:])
    obj = example_prompts("fish", "object")
    assert "Fish" in obj[0] and "Fish" not in obj[-1]
