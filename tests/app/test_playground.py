import json
import socket

import numpy as np
import pytest
import torch

from app.playground import Playground, build_app, build_parser, example_prompts, main
from erase.artifacts import ArtifactError, EraseRecord, save_artifact
from erase.cli import main as erase_main
from erase.loading import load_erased_pipeline
from erase.provenance import module_sha256
from pipelines.stable_diffusion import generate

PROMPT = "A Fish image in Candy style."


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


def test_compare_shows_the_base_and_the_erased_model_from_one_seed(tiny_pipe, artifact):
    folder, erased_pipe = artifact
    base_hash = module_sha256(tiny_pipe.unet)
    playground = Playground(None, [folder], base=tiny_pipe)  # the session's pipeline is the artifact's base
    label = next(iter(playground.erased))
    original, erased, caption = playground.compare(PROMPT, label, 7, 3, 5.0)
    base_img = generate(tiny_pipe, [PROMPT], [7], steps=3, guidance_scale=5.0)[0]
    want_erased = generate(erased_pipe, [PROMPT], [7], steps=3, guidance_scale=5.0)[0]
    scale = original.width // base_img.shape[1]
    assert original.width >= 256 and scale > 1
    # same weights, prompt, seed and batch of one: the same pixels (within one grey level of rounding),
    # shown enlarged without smoothing; the erasure changes the picture by more than that
    def grey_levels(a, b):
        return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()

    assert grey_levels(np.asarray(original)[::scale, ::scale], base_img) <= 1
    assert grey_levels(np.asarray(erased)[::scale, ::scale], want_erased) <= 1
    assert grey_levels(base_img, want_erased) > 1
    assert "seed 7" in caption and "'Candy'" in caption
    assert module_sha256(tiny_pipe.unet) == base_hash  # the erased copy did not leak into the shared base
    assert playground.erased[label].text_encoder is tiny_pipe.text_encoder  # unchanged components are shared
    with pytest.raises(ValueError, match="prompt"):
        playground.compare("  ", label, 7, 3, 5.0)
    with pytest.raises(ValueError, match="steps"):
        playground.compare(PROMPT, label, 7, 0, 5.0)
    with pytest.raises(ValueError, match="unknown erased model"):
        playground.compare(PROMPT, "nothing", 7, 3, 5.0)


def test_base_named_in_erase_json_is_loaded_and_the_app_listens_on_localhost(tiny_pipe, artifact):
    import gradio as gr

    playground = Playground(None, [artifact[0]])  # base loaded from the folder named in erase.json
    assert module_sha256(playground.base.unet) == module_sha256(tiny_pipe.unet)
    assert playground.base is not tiny_pipe
    demo = build_app(playground)
    assert isinstance(demo, gr.Blocks)
    assert build_parser().parse_args(["--artifact", "x"]).host == "127.0.0.1"


def _free_port() -> str:
    """A port nothing listens on now, so that these tests do not depend on 7860 being free on the machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_artifacts_give_one_line_errors(tmp_path, capsys):
    assert main(["--artifact", str(tmp_path / "missing"), "--port", _free_port()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    with pytest.raises(ArtifactError):
        Playground(None, [])


def test_a_port_out_of_range_or_taken_is_one_line_before_any_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "missing")  # the port is checked first: no artifact is read, no model loaded
    assert main(["--artifact", missing, "--port", "99999"]) == 2
    assert "--port must be between 1 and 65535" in _one_error_line(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--artifact", missing, "--port", str(port)]) == 2
    assert f"127.0.0.1:{port}: already in use" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_erase_json_without_a_component_format_is_one_line(artifact, capsys):
    folder = artifact[0]
    record = json.loads((folder / "erase.json").read_text())
    del record["components"]["unet"]["format"]
    (folder / "erase.json").write_text(json.dumps(record))
    assert main(["--artifact", str(folder), "--port", _free_port()]) == 2
    assert "component 'unet' lacks key 'format'" in _one_error_line(capsys)


def test_an_artifact_of_another_base_is_refused(artifact, embedded_pipe):
    with pytest.raises(ArtifactError, match="differs from the one"):
        Playground(None, [artifact[0]], base=embedded_pipe)


def test_example_prompts_name_the_concept_and_a_retained_one():
    style = example_prompts("Candy", "style")
    assert "Candy" in style[0] and all("Candy" not in p for p in style[2:])
    obj = example_prompts("fish", "object")
    assert "Fish" in obj[0] and "Fish" not in obj[-1]
    assert example_prompts("Van Gogh", "style")[0] == "A Architectures image in Van Gogh style."
    assert example_prompts("teapot", "object")[0] == "A photo of teapot."


def test_an_advunlearn_text_encoder_shows_with_the_base_unet_shared(tiny_pipe, tiny_sd_dir, tmp_path):
    folder = tmp_path / "advunlearn-candy"
    assert erase_main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                       str(folder), "--steps", "2", "--quiet", "--threads", "1", "warmup=1", "attack_steps=1",
                       "ddim_steps=2", "retain_batch=2", "retain_prompts=domain", "lr=0.5"]) == 0
    playground = Playground(None, [folder], base=tiny_pipe)
    label = next(iter(playground.erased))
    erased = playground.erased[label]
    assert erased.unet is tiny_pipe.unet and erased.text_encoder is not tiny_pipe.text_encoder
    _, shown, caption = playground.compare(PROMPT, label, 5, 3, 5.0)
    want = generate(load_erased_pipeline(folder), [PROMPT], [5], steps=3, guidance_scale=5.0)[0]
    scale = shown.width // want.shape[1]
    assert np.abs(np.asarray(shown, dtype=int)[::scale, ::scale] - want.astype(int)).max() <= 1  # one grey level
    assert "advunlearn" in caption
