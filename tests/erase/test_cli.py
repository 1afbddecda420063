import json
import shutil

import pytest
import torch

from erase.artifacts import ArtifactError, read_record
from erase.cli import MAX_NAME_BYTES, _slug, main
from erase.loading import load_erased_pipeline
from erase.provenance import module_sha256
from tests.benchmarks.unlearncanvas.test_comparability import json_strings

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
    for text in ("esd (gradient, diffusion):", "salun (gradient, diffusion):", "feature-unlearning (gradient, generator)",
                 "negative_guidance=1.0", "mask_keep=0.5", "lr=1e-05", "preset esd.minicanvas (style)", "why steps:"):
        assert text in out


@pytest.mark.parametrize("argv,message", [
    (["--method", "nope", "--concept", "Candy"], "unknown method 'nope'"),
    (["--method", "esd", "--concept", "  "], "concept is empty"),
    (["--method", "esd", "--concept", "Candy", "--model", "./no-such-model"], "does not exist"),  # in the empty cwd
    (["--method", "esd", "--concept", "Candy", "bogus=1"], "unknown option 'bogus'"),
    (["--method", "esd", "--concept", "Candy", "lr=fast"], "expects float"),
    (["--method", "esd", "--concept", "Candy", "lr=-1"], "lr must be positive"),
    (["--method", "esd", "--concept", "Candy", "lr=nan"], "finite number"),
    (["--method", "esd", "--concept", "Candy", "--seed", str(2**64)], "--seed must be between"),
    (["--method", "esd", "--concept", "Candy", "--seed", "-1"], "--seed must be between"),
    (["--method", "salun", "--concept", "Candy", "mask_keep=1.5"], "mask_keep"),
    (["--method", "esd", "--concept", "Candy", "--labels", "x.json"], "belongs to generator methods"),
    (["--method", "feature-unlearning", "--model", "digits-vae", "--concept", "7", "--classifier", "digits",
      "batch_size=0"], "option batch_size must be at least 1"),
    (["--method", "esd", "--concept", "Candy", "--threads", "-1"], "--threads must be between 0"),
    (["--method", "esd", "--concept", "Candy", "--device", "cuda:1"], "pick a GPU with CUDA_VISIBLE_DEVICES"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tiny_sd_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_sd_dir)]
    code, out, err = _run(argv + ["--output", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_very_long_concept_gets_a_short_default_folder(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["--method", "esd", "--concept", "very " * 2000 + "long", "--model", str(tiny_sd_dir),
                         *FAST, "--steps", "1"], capsys)
    assert code == 0, err
    (folder,) = (tmp_path / "erased").iterdir()
    assert len(folder.name) <= 90 and read_record(folder).concept.endswith("long")


def test_default_folder_names_keep_letters_of_any_script_within_the_file_name_limit():
    assert _slug("Ünïcödé 梵高 style!") == "ünïcödé-梵高-style"
    long = _slug("𝒜" * 200)  # 4 UTF-8 bytes per letter
    assert long.startswith("𝒜") and len(long.encode()) <= MAX_NAME_BYTES


def test_fp16_on_a_cpu_records_what_ran_and_says_so_once(tiny_sd_dir, tmp_path, capsys):
    threads_before = torch.get_num_threads()
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                         str(tmp_path / "o"), "--device", "cpu", "--mixed-precision", "fp16", *FAST], capsys)
    assert code == 0, err
    # the note is the only line: --quiet also silences the libraries' "Loading ..." bars
    assert err.startswith("note: --mixed-precision fp16 does not run on cpu") and err.count("\n") == 1
    record = read_record(tmp_path / "o")
    assert record.trainer["mixed_precision"] == "no" and record.trainer["mixed_precision_requested"] == "fp16"
    # the default thread count: one for the tiny UNet, recorded with its reason, then given back to the process
    assert record.cost["torch_threads"] == record.cost["threads"]["torch_threads"] == 1
    assert record.cost["threads"]["chosen_by"].startswith("default: one thread below")
    assert torch.get_num_threads() == threads_before
    # on a CPU the method's batch stays as configured (erase.memory), recorded with its reason
    assert record.cost["batch"]["chosen_by"] == "default" and record.cost["batch"]["grad_accum"] == 1


def test_resume_without_a_checkpoint_starts_at_step_0_and_says_so(tiny_sd_dir, tmp_path, capsys):
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                         str(tmp_path / "o"), "--resume", "--threads", "1", *FAST], capsys)
    assert code == 0, err
    assert err.startswith("note: --resume: no checkpoint") and "starting from step 0" in err and err.count("\n") == 1
    record = read_record(tmp_path / "o")
    assert record.train["resumed_from"] == 0 and record.train["steps"] == 3
    assert record.cost["torch_threads"] == 1 and record.cost["threads"]["chosen_by"] == "--threads"


def test_without_quiet_the_loading_bars_show(tiny_sd_dir, tmp_path, capsys):
    """The counterpart of the --quiet runs above: the same load prints the libraries' bars."""
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                         str(tmp_path / "o"), "--steps", "1", "ddim_steps=2", "--threads", "1"], capsys)
    assert code == 0, err
    assert "Loading pipeline components" in err


def test_end_to_end_then_existing_and_unwritable_outputs(tiny_sd_dir, tiny_pipe, tmp_path, capsys):
    out = tmp_path / "esd-candy"
    code, stdout, _ = _run(["--method", "esd", "--concept", "Candy", "--model", str(tiny_sd_dir),
                            "--output", str(out), *FAST], capsys)
    assert code == 0 and str(out) in stdout and "peak memory" in stdout and "size" in stdout
    record = read_record(out)
    assert record.kind == "style" and record.config["variant"] == "auto" and record.preset is None
    assert record.run == {"variant": "esd-x"} and record.method_kind == "gradient"
    assert record.cost["seconds"] > 0 and record.cost["artifact_bytes"] > 0
    assert not list(tmp_path.glob(".*"))  # no work folder or temp folder left behind
    erased = load_erased_pipeline(out)
    # the artifact's weights are the ones loaded: one Adam step moves a trained weight by about lr (its images
    # differ from the base's only by a rounding step, too little to tell a loaded change from noise)
    moved = max((a - b).abs().max().item() for a, b in zip(erased.unet.parameters(), tiny_pipe.unet.parameters()))
    assert moved > 0.5 * record.config["lr"]
    before = (out / "erase.json").read_text()
    code, _, err = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output", str(out),
                         *FAST], capsys)
    assert code == 2 and "already holds an artifact" in err and (out / "erase.json").read_text() == before
    code, _, _ = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output", str(out),
                       "--overwrite", *FAST], capsys)
    assert code == 0 and read_record(out).concept == "Fire"
    for bad in (tiny_sd_dir / "unet" / "config.json" / "x", "/proc/erase-test/out"):
        code, _, err = _run(["--method", "esd", "--concept", "Fire", "--model", str(tiny_sd_dir), "--output",
                             str(bad), *FAST], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_a_local_base_is_recorded_relative_to_the_artifact_and_found_when_both_move(tiny_sd_dir, tiny_pipe, tmp_path,
                                                                                     capsys):
    """erase.json names no folder of the machine it was made on; artifact and base moved together still load."""
    shutil.copytree(tiny_sd_dir, tmp_path / "here" / "models" / "tiny-sd")
    out = tmp_path / "here" / "erased" / "esd-candy"
    base = tmp_path / "here" / "models" / "tiny-sd"
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--model", str(base), "--output", str(out), *FAST],
                        capsys)
    assert code == 0, err
    record = json.loads((out / "erase.json").read_text())
    assert record["base_model"] == {"id": "tiny-sd", "type": "diffusion", "folder": "../../models/tiny-sd"}
    assert not [s for s in json_strings(record) if s.startswith("/") or str(tmp_path) in s]
    erased = module_sha256(load_erased_pipeline(out).unet)
    assert erased != module_sha256(tiny_pipe.unet)  # the erasure changed the UNet
    (tmp_path / "there").mkdir()
    shutil.move(tmp_path / "here", tmp_path / "there" / "moved")  # both together, elsewhere
    moved = tmp_path / "there" / "moved" / "erased" / "esd-candy"
    assert module_sha256(load_erased_pipeline(moved).unet) == erased  # the same weights, found from the new place
    shutil.move(moved, tmp_path / "alone")  # the artifact without its base: one line that says what to do
    with pytest.raises(ArtifactError, match="relative to the artifact.*name the base with --model"):
        load_erased_pipeline(tmp_path / "alone")
    assert module_sha256(load_erased_pipeline(tmp_path / "alone", model=tiny_sd_dir).unet) == erased  # named: loads


def test_config_file_and_overrides_layer_in_order(tiny_sd_dir, tmp_path, capsys):
    cfg = tmp_path / "esd.toml"
    cfg.write_text('negative_guidance = 2.0\nlr = 1e-4\n[esd]\nvariant = "esd-u"\n[trainer]\ncheckpoint_every = 1\n')
    out = tmp_path / "o"
    code, _, err = _run(["--method", "esd", "--concept", "a red car", "--model", str(tiny_sd_dir), "--output",
                         str(out), "--config", str(cfg), *FAST, "lr=3e-4"], capsys)
    assert code == 0, err
    record = read_record(out)
    assert record.kind == "object" and record.config["variant"] == "esd-u"
    assert record.config["negative_guidance"] == 2.0 and record.config["lr"] == 3e-4
    assert record.trainer["checkpoint_every"] == 1 and record.train["steps"] == 3


def test_embedded_preset_applies_only_to_the_embedded_model(tmp_path, capsys):
    code, _, err = _run(["--method", "esd", "--concept", "Candy", "--output", str(tmp_path / "p"), *FAST], capsys)
    assert code == 0, err
    record = read_record(tmp_path / "p")
    assert record.preset["name"] == "esd.minicanvas" and record.config["variant"] == "esd-x"
    assert record.config["lr"] == 2e-4 and record.config["ddim_steps"] == 3  # key=value beats the preset
    assert record.base_model == {"id": "minicanvas-sd", "type": "diffusion"} and record.train["steps"] == 3
    assert record.domain == "minicanvas" and record.concept_name == "Candy"
    code, _, _ = _run(["--method", "esd", "--concept", "Candy", "--output", str(tmp_path / "n"), "--no-preset",
                       *FAST], capsys)
    record = read_record(tmp_path / "n")
    assert code == 0 and record.preset is None and record.config["lr"] == 1e-5
