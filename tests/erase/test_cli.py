import json
import numpy as np
import pytest

from erase.cli import main
from pipelines.stable_diffusion import generate, load_erased_pipeline, load_pipeline

FAST = ["--steps", "3", "--quiet", "ddim_steps=3"]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_methods_and_options_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for text in ("esd:", "salun:", "negative_guidance=1.0", "mask_keep=0.5", "lr=1e-05", "embedded preset"):
        assert text in out


@pytest.mark.parametrize("argv,message", [
    (["--method", "nope", "--concept", "Candy"], "unknown method 'nope'"),
    (["--method", "esd", "--concept", "  "], "concept is empty"),
    (["--method", "esd", "--concept", "Candy", "--model", "/no/such/model"], "does not exist"),
    (["--method", "esd", "--concept", "Candy", "bogus=1"], "unknown option 'bogus'"),
    (["--method", "esd", "--concept", "Candy", "lr=fast"], "expects float"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tiny_sd_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_sd_dir)]
    code, out, err = _run(argv + ["--output", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sd"]


def test_end_to_end_then_existing_and_unwritable_outputs(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "esd-candy"
    code, stdout, _ = _run(["--method", "esd", "--concept", "Candy", "--model", str(tiny_sd_dir),
                            "--output", str(out), *FAST], capsys)
    assert code == 0 and str(out) in stdout and "peak memory" in stdout and "size" in stdout
    meta = json.loads((out / "erase.json").read_text())
    assert meta["kind"] == "style" and meta["config"]["variant"] == "auto" and meta["preset"] is None
    assert meta["cost"]["seconds"] > 0 and meta["cost"]["artifact_bytes"] > 0
    assert not list(tmp_path.glob(".*"))  # no work folder or temp folder left behind
    erased = load_erased_pipeline(out)
    prompt = ["A Fish image in Candy style."]
    assert not np.array_equal(generate(erased, prompt, [1], steps=2), generate(load_pipeline(tiny_sd_dir), prompt,
                                                                              [1], steps=2))
    before = (out / "erase.json").read_text()
    code, _, err = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output", str(out),
                         *FAST], capsys)
    assert code == 2 and "already holds an artifact" in err and (out / "erase.json").read_text() == before
    code, _, _ = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output", str(out),
                       "--overwrite", *FAST], capsys)
    assert code == 0 and json.loads((out / "erase.json").read_text())["concept"] == "Fire"
    for bad in (tiny_sd_dir / "unet" / "config.json" / "x", "/proc/erase-test/out"):
        code, _, err = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output",
                             str(bad), *FAST], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_config_file_and_overrides_layer_in_order(tiny_sd_dir, tmp_path, capsys):
    cfg = tmp_path / "esd.toml"
    cfg.write_text('negative_guidance = 2.0\nlr = 1e-4\n[esd]\nvariant = "esd-u"\n[trainer]\ncheckpoint_every = 1\n')
    out = tmp_path / "o"
    code, _, err = _run(["--method", "esd", "--concept", "a red car", "--model", str(tiny_sd_dir), "--output",
                         str(out), "--config", str(cfg), *FAST, "lr=3e-4"], capsys)
    assert code == 0, err
    meta = json.loads((out / "erase.json").read_text())
    assert meta["kind"] == "object" and meta["config"]["variant"] == "esd-u"
    assert meta["config"]["negative_guidance"] == 2.0 and meta["config"]["lr"] == 3e-4
    assert meta["trainer"]["checkpoint_every"] == 1 and meta["train"]["steps"] == 3


def test_embedded_preset_applies_only_to_the_embedded_model(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    import pipelines.stable_diffusion as sd

    monkeypatch.setattr(sd, "EMBEDDED_MODEL_DIR", tiny_sd_dir)  # stand-in for the shipped minicanvas-sd
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--output", str(tmp_path / "p"), *FAST], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "p" / "erase.json").read_text())
    assert meta["preset"]["name"] == "embedded" and meta["config"]["variant"] == "esd-x"
    assert meta["config"]["lr"] == 2e-4 and meta["config"]["ddim_steps"] == 3  # key=value beats the preset
    assert meta["base_model"]["id"] == "minicanvas-sd" and meta["train"]["steps"] == 3
    code, _, _ = _run(["--method", "esd", "--concept", "Candy", "--output", str(tmp_path / "n"), "--no-preset",
                       *FAST], capsys)
    meta = json.loads((tmp_path / "n" / "erase.json").read_text())
    assert code == 0 and meta["preset"] is None and meta["config"]["lr"] == 1e-5
