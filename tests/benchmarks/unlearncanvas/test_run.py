"""unlearncanvas-eval, the command line: options -> EvalConfig, one line and exit 2 on bad input, artifacts."""

import json
import shutil
from importlib.metadata import entry_points

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.unlearncanvas.config import EvalConfig
from benchmarks.unlearncanvas.judges import load_classifier, load_judges
from benchmarks.unlearncanvas.run import build_parser, config_from_args, main
from erase.artifacts import EraseRecord, read_record, save_artifact
from erase.concepts import UNLEARNCANVAS
from erase.provenance import folder_hash, module_sha256, relative_path
from tests.benchmarks.unlearncanvas.scorers.test_classifier import _vit_checkpoint

CPU = ["--device", "cpu", "--no-progress"]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def snapshot(folder):
    """Every file under a folder with its size and modification time: proves nothing was written there."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_console_script_is_this_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "unlearncanvas-eval"]
    assert script.value == "benchmarks.unlearncanvas.run:main" and script.load() is main


def test_every_option_reaches_the_config():
    args = build_parser().parse_args([
        "--out", "o", "--domain", "unlearncanvas", "--target", "Dogs", "--target", "Monet", "--seeds", "1", "2",
        "--answer-set", "a", "--steps", "3", "--guidance", "2.5", "--size", "64", "--batch-size", "8", "--ext", "png",
        "--photo-phrase", "Seed Images", "--label", "x", "--grid-seed", "2", "--classifier", "c",
        "--style-classifier", "s.pth", "--object-classifier", "o.pth", "--classifier-arch", "vit_tiny_patch16_224",
        "--clip", "cl", "--clip-model", "ViT-B-32", "--clip-pretrained", "w", "--no-clip", "--dataset", "d",
        "--inception-weights", "i.pth", "--no-fid", "--device", "cpu", "--no-progress", "--attack", "soft",
        "--attack-tokens", "2", "--attack-insertion", "prefix", "--attack-timesteps", "4", "--attack-steps", "5",
        "--attack-prompts", "6", "--themes", "Monet", "Van Gogh", "--objects", "Dogs", "Cats", "--no-baseline",
        "--baseline-cache", "bc"])
    assert config_from_args(args) == EvalConfig(
        domain="unlearncanvas", targets=["Dogs", "Monet"], seeds=[1, 2], themes=["Monet", "Van Gogh"],
        objects=["Dogs", "Cats"], baseline=False, baseline_cache="bc", steps=3, guidance=2.5, size=64, batch_size=8,
        ext="png", photo_phrase="Seed Images", out="o", answer_dir="a", label="x", grid_seed=2, classifier="c",
        style_classifier="s.pth", object_classifier="o.pth", classifier_arch="vit_tiny_patch16_224", use_clip=False,
        clip_dir="cl", clip_model="ViT-B-32", clip_pretrained="w", use_fid=False, dataset="d",
        inception_weights="i.pth", device="cpu", progress=False, attack="soft", attack_tokens=2,
        attack_insertion="prefix", attack_timesteps=4, attack_steps=5, attack_prompts=6)
    assert config_from_args(build_parser().parse_args(["--out", "o"])) == EvalConfig(out="o")  # same defaults


def test_unlearncanvas_classifier_options_build_the_timm_judges(tmp_path):
    _vit_checkpoint(tmp_path / "style50.pth", 51)
    _vit_checkpoint(tmp_path / "style50_cls.pth", 20)
    cfg = EvalConfig(domain="unlearncanvas", style_classifier=tmp_path / "style50.pth",
                     object_classifier=tmp_path / "style50_cls.pth", classifier_arch="vit_tiny_patch16_224")
    judge, name = load_classifier(cfg, UNLEARNCANVAS, "cpu")
    assert judge.themes == UNLEARNCANVAS.themes and "style50.pth" in name


@pytest.mark.parametrize("fields,message", [
    ({"domain": "unlearncanvas"}, "needs --style-classifier and --object-classifier"),
    ({"style_classifier": "s.pth"}, "go together"),
    ({"clip_pretrained": "openai"}, "--clip-pretrained needs --clip-model"),
    ({"use_clip": False}, "drop --no-clip or pass --no-fid"),
])
def test_judge_options_that_do_not_fit_together(fields, message):
    with pytest.raises(ValueError, match=message):
        load_judges(EvalConfig(**fields))


@pytest.mark.parametrize("case", ["classifier", "dataset", "empty", "artifact", "target", "score-only", "huge-seed",
                                  "negative-seed", "size", "grid-seed", "no-format", "threads", "attack-no-target",
                                  "attack-tokens", "attack-budget", "attack-options-alone", "attack-score-only",
                                  "attack-vocabulary"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_sd_dir, capsys, case):
    out = tmp_path / "out"
    base = ["--model", tiny_sd_dir, "--seeds", "188", "--steps", "1", "--out", out, *CPU]
    model_files = snapshot(tiny_sd_dir)
    if case == "classifier":
        (tmp_path / "judge").mkdir()
        (tmp_path / "judge" / "config.json").write_text("{}")
        (tmp_path / "judge" / "model.safetensors").write_bytes(b"not weights")
        args, msg = base + ["--classifier", tmp_path / "judge"], "corrupt"
    elif case == "dataset":
        (tmp_path / "ds" / "Candy" / "Arrow").mkdir(parents=True)
        args, msg = base + ["--dataset", tmp_path / "ds"], "lacks"
    elif case == "empty":
        (tmp_path / "answers").mkdir()
        args = ["--score-only", "--answer-set", tmp_path / "answers", "--no-clip", "--no-fid", "--out", out, *CPU]
        msg = "no answer-set images"
    elif case == "artifact":
        args, msg = base + ["--artifact", tmp_path / "nothing"], "does not exist"
    elif case == "target":
        args, msg = base + ["--target", "Van_Gogh"], "not a style or object of minicanvas"
    elif case == "score-only":
        args, msg = base + ["--score-only", "--artifact", tmp_path / "nothing"], "--score-only loads no model"
    elif case in ("huge-seed", "negative-seed"):  # a later --seeds replaces the first
        args, msg = base + ["--seeds", 10**20 if case == "huge-seed" else -3], "--seeds must be between 0 and"
    elif case == "size":
        args, msg = base + ["--size", "7"], "--size must be a multiple of 8"
    elif case == "grid-seed":
        args, msg = base + ["--grid-seed", "5"], "--grid-seed 5 is not one of --seeds"
    elif case == "no-format":
        record = _record(str(tiny_sd_dir), {}).to_json()
        record["components"] = {"unet": {"class": "UNet2DConditionModel", "tensors": 1}}
        (tmp_path / "art").mkdir()
        (tmp_path / "art" / "erase.json").write_text(json.dumps(record))
        args, msg = base + ["--artifact", tmp_path / "art"], "component 'unet' lacks key 'format'"
    elif case == "threads":
        args, msg = base + ["--threads", "-1"], "--threads must be between 0"
    elif case == "attack-no-target":  # the base model has no concept of its own
        args, msg = base + ["--attack", "unlearndiffatk"], "--attack needs a target"
    elif case == "attack-tokens":
        args, msg = base + ["--target", "Candy", "--attack", "soft", "--attack-tokens", "0"], "at least 1 token"
    elif case == "attack-budget":
        args, msg = base + ["--target", "Candy", "--attack", "unlearndiffatk", "--attack-timesteps", "0"], \
            "at least one step"
    elif case == "attack-options-alone":
        args, msg = base + ["--target", "Candy", "--attack-prompts", "5"], "--attack-* options need --attack"
    elif case == "attack-score-only":
        (tmp_path / "answers").mkdir()
        args = ["--score-only", "--answer-set", tmp_path / "answers", "--no-clip", "--no-fid", "--out", out,
                "--target", "Candy", "--attack", "unlearndiffatk", *CPU]
        msg = "--attack needs the model"
    else:  # a text encoder whose embedding table is smaller than the tokenizer: ids would index nothing
        small = tmp_path / "small-vocab"
        shutil.copytree(tiny_sd_dir, small)
        config = CLIPTextConfig.from_pretrained(small / "text_encoder")
        config.vocab_size = 1000
        CLIPTextModel(config).save_pretrained(small / "text_encoder")
        args = [a if a != tiny_sd_dir else small for a in base] + ["--target", "Candy", "--attack", "unlearndiffatk"]
        msg = "the text encoder embeds only 1000"
        capsys.readouterr()  # what building the folder printed
    inputs = {p.name for p in tmp_path.iterdir()}
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 2
    assert err.startswith("unlearncanvas-eval: error:") and msg in err and err.count("\n") == 1, err
    assert {p.name for p in tmp_path.iterdir()} == inputs  # no output folder, no answer set, nothing else
    if case == "empty":
        assert list((tmp_path / "answers").iterdir()) == []
    assert snapshot(tiny_sd_dir) == model_files  # the shared model folder is read only


def _record(base_id: str, cost: dict) -> EraseRecord:
    return EraseRecord(method="esd", method_kind="gradient", concept="Fire", concept_name="Fire", kind="style",
                       domain="minicanvas", config={"steps": 1}, preset=None,
                       base_model={"id": base_id, "type": "diffusion"}, seed=0, trainer=None, train={}, cost=cost)


def test_erased_artifact_gives_target_label_efficiency_and_keys_its_answer_set(tmp_path, tiny_sd_dir,
                                                                                fresh_tiny_pipe, capsys):
    pipe = fresh_tiny_pipe
    base_hash = module_sha256(pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)  # the "erasure"
    record = _record(str(tiny_sd_dir), {"seconds": 42.0, "peak_memory_bytes": 1_500_000_000,
                                        "peak_memory_kind": "process_max_rss"})
    save_artifact(tmp_path / "art", {"unet": pipe.unet}, record, trained=["unet.conv_out.bias"],
                  base_hashes={"unet": base_hash})
    out = tmp_path / "out"
    args = ["--artifact", tmp_path / "art", "--seeds", "188", "--steps", "1", "--no-clip", "--no-fid", "--out", out,
            *CPU]
    rc, stdout, err = run_cli(args, capsys)  # base model and target from erase.json
    assert rc == 0, err
    assert "Loading" not in err  # --no-progress silences the libraries' loading bars too
    res = json.loads((out / "results.json").read_text())
    assert res["label"] == "esd" and [t["target"] for t in res["targets"]] == ["Fire"]
    # paths relative to the working directory, the model named by content
    assert res["model"]["artifact"] == relative_path(tmp_path / "art") and not res["model"]["artifact"].startswith("/")
    assert res["model"]["base"] == relative_path(tiny_sd_dir)
    assert res["model"]["key"] == f"tiny-sd@{folder_hash(tiny_sd_dir)}+artifact@{folder_hash(tmp_path / 'art')}"
    e = res["efficiency"]
    assert e["time_s"] == 42.0 and e["memory_gb"] == 1.5 and 0 < e["storage_bytes"] < 10_000_000
    assert res["fid"] is None and res["clip"] is None
    assert "esd on minicanvas: 110 images (110 generated now)" in stdout and "style targets (1)" in stdout
    # the same weights with a rewritten erase.json (another run's times) reuse the answer set ...
    rewritten = read_record(tmp_path / "art")
    rewritten.cost["seconds"] = 43.0
    (tmp_path / "art" / "erase.json").write_text(json.dumps(rewritten.to_json()))
    rc, _, err = run_cli(args, capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["answer_set"]["generated"] == 0 and res["efficiency"]["time_s"] == 43.0
    # ... other weights in the same folder are refused, not mixed in
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)
    save_artifact(tmp_path / "art", {"unet": pipe.unet}, rewritten, trained=["unet.conv_out.bias"],
                  base_hashes={"unet": base_hash}, overwrite=True)
    rc, _, err = run_cli(args, capsys)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("unlearncanvas-eval: error:") and "was generated with model=" in last
    assert len(list((out / "answer_set").glob("*.png"))) == 110  # nothing added by the refused run


def test_merge_subcommand_is_the_leaderboard(tiny_eval, tmp_path, capsys):
    rc, stdout, err = run_cli(["merge", tiny_eval.out, "--out", tmp_path / "lb", "--allow-subset"], capsys)
    assert rc == 0, err
    assert "| base |" in stdout and (tmp_path / "lb" / "leaderboard.png").is_file()


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "minicanvas: 25" in capsys.readouterr().out
