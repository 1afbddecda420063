import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.unlearncanvas.constants import OBJECTS, THEMES, UNLEARNCANVAS, answer_file_name
from benchmarks.unlearncanvas.run import main

CPU = ["--device", "cpu", "--no-progress"]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_end_to_end_on_a_tiny_model_resumes_and_merges(tmp_path, tiny_sd_dir, capsys):
    out = tmp_path / "base"
    args = ["--model", tiny_sd_dir, "--target", "Fire", "--target", "fish", "--seeds", "188", "--steps", "2",
            "--guidance", "3", "--out", out, *CPU]
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["answer_set"]["images"] == 110 and res["answer_set"]["generated"] == 110
    assert res["answer_set"]["steps"] == 2 and res["answer_set"]["guidance_scale"] == 3.0
    assert [t["target"] for t in res["targets"]] == ["Fire", "Fish"]
    for t, kept in zip(res["targets"], (100, 99)):  # Fire's 10 cells, Fish's 11 cells left out
        assert all(0 <= t[k] <= 1 for k in ("UA", "IRA", "CRA", "clip_removal_accuracy"))
        assert t["fid_generated"] == kept and t["fid_reference"] == 5 * kept
    style = res["targets"][0]
    acc = res["accuracy"]
    assert style["UA"] == pytest.approx(1 - acc["style"]["Fire"])
    assert style["CRA"] == pytest.approx(np.mean(list(acc["object"].values())))
    assert "Frechet CLIP distance" in res["fid"]["features"] and res["fid"]["kind"] == "clip"
    assert res["classifier"]["name"].startswith("MiniCanvas classifier") and res["hardware"]
    assert res["efficiency"] is None and res["label"] == "base"
    assert (out / "answer_set_grid.png").is_file() and "| Fire | style |" in (out / "results.md").read_text()
    assert len(list((out / "answer_set").glob("Candy_Arrow_seed188.png"))) == 1
    # a second run reuses every image
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    assert json.loads((out / "results.json").read_text())["answer_set"]["generated"] == 0
    # merge into a leaderboard with a second "method"
    res["label"] = "other"
    (tmp_path / "other.json").write_text(json.dumps(res))
    rc, stdout, err = run_cli(["merge", out / "results.json", tmp_path / "other.json", "--out", tmp_path / "lb"], capsys)
    assert rc == 0, err
    board = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [r["method"] for r in board["rows"]] == ["base", "other"]
    assert board["rows"][0]["St. UA"] == pytest.approx(100 * style["UA"])
    assert "| base |" in (tmp_path / "lb" / "leaderboard.md").read_text() and (tmp_path / "lb" / "leaderboard.png").is_file()
    res["domain"] = "unlearncanvas"
    (tmp_path / "third.json").write_text(json.dumps(res))
    rc, _, err = run_cli(["merge", out, tmp_path / "third.json", "--out", tmp_path / "lb2"], capsys)
    assert rc == 2 and "different domains" in err and not (tmp_path / "lb2").exists()


def _vit(path, classes):
    import timm

    torch.manual_seed(classes)
    model = timm.create_model("test_vit", pretrained=False, num_classes=classes)
    torch.save({"model_state_dict": model.state_dict()}, path)


def _fake_unlearncanvas(root, per_cell=5, size=8):
    rng = np.random.default_rng(0)
    for t in THEMES + ("Impasto",):  # an unused style folder, as in the real download
        for o in OBJECTS:
            (root / t / o).mkdir(parents=True)
            for i in range(1, per_cell + 1):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / t / o / f"{i}.jpg")


class FirstLabelJudge:
    """Stands in for the ViT-L/16 judges (exercised in test_classifier.py): always predicts label 0."""

    themes, objects = THEMES, OBJECTS

    def predict(self, images):
        return torch.zeros(len(images), dtype=torch.long), torch.zeros(len(images), dtype=torch.long)


def test_unlearncanvas_classifier_options_build_the_timm_judges(tmp_path):
    from benchmarks.unlearncanvas.run import _classifier, build_parser

    _vit(tmp_path / "style50.pth", 51)
    _vit(tmp_path / "style50_cls.pth", 20)
    args = build_parser().parse_args(["--out", "x", "--domain", "unlearncanvas", "--style-classifier",
                                      str(tmp_path / "style50.pth"), "--object-classifier",
                                      str(tmp_path / "style50_cls.pth"), "--classifier-arch", "test_vit"])
    judge, name = _classifier(args, UNLEARNCANVAS, "cpu")
    assert judge.themes == THEMES and "style50.pth" in name


def test_unlearncanvas_layout_with_real_names_is_scored(tmp_path, capsys, monkeypatch):
    """Official names and label order end to end: fake dataset, fake answer set, open_clip by name."""
    from benchmarks.unlearncanvas import run
    from tests.benchmarks.unlearncanvas.test_clip import register_tiny_open_clip

    _fake_unlearncanvas(tmp_path / "uc")
    answers = tmp_path / "answers"
    answers.mkdir()
    rng = np.random.default_rng(1)
    for t in THEMES:
        for o in OBJECTS:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                answers / answer_file_name(t, o, 188, "jpg"))
    monkeypatch.setattr(run, "_classifier", lambda args, domain, device: (FirstLabelJudge(), "first-label judge"))
    arch = register_tiny_open_clip(tmp_path / "clip")
    rc, stdout, err = run_cli(["--domain", "unlearncanvas", "--score-only", "--answer-set", answers, "--seeds", "188",
                               "--clip-model", arch, "--clip-pretrained", tmp_path / "clip" / "weights.safetensors",
                               "--dataset", tmp_path / "uc", "--target", "Van Gogh", "--target", "Dogs",
                               "--out", tmp_path / "out", *CPU], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    van_gogh, dogs = res["targets"]
    assert van_gogh["target"] == "Van_Gogh" and dogs["kind"] == "object"
    # the judge is right only on Abstractionism (style) and Architectures (object)
    assert van_gogh["UA"] == 1 and van_gogh["IRA"] == pytest.approx(1 / 49) and van_gogh["CRA"] == pytest.approx(1 / 20)
    assert dogs["UA"] == 1 and dogs["IRA"] == pytest.approx(1 / 19) and dogs["CRA"] == pytest.approx(1 / 50)
    assert van_gogh["fid_reference"] == 5000 and dogs["fid_reference"] == 4845  # the protocol's sizes
    assert list(res["accuracy"]["style"])[38] == "Seed_Images" and len(res["accuracy"]["object"]) == 20
    assert res["classifier"]["images_per_theme"] == 20 and res["classifier"]["images_per_object"] == 51
    assert res["answer_set"]["prompt_template"] == UNLEARNCANVAS.prompt("{style}", "{object}")
    assert arch in res["clip"]["scorer"] and arch in res["fid"]["features"]


@pytest.mark.parametrize("case", ["classifier", "dataset", "empty", "artifact", "target"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_sd_dir, capsys, case):
    out = tmp_path / "out"
    base = ["--model", tiny_sd_dir, "--seeds", "188", "--steps", "1", "--out", out, *CPU]
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
        args, msg = ["--score-only", "--answer-set", tmp_path / "answers", "--out", out, *CPU], "no answer-set images"
    elif case == "artifact":
        args, msg = base + ["--artifact", tmp_path / "nothing"], "does not exist"
    else:
        args, msg = base + ["--target", "Van_Gogh"], "not a style or object of minicanvas"
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 2
    assert err.startswith("unlearncanvas-eval: error:") and msg in err and err.count("\n") == 1, err
    assert not (out / "results.json").exists() and not (out / "answer_set").exists()


def test_erased_artifact_gives_target_label_and_efficiency(tmp_path, tiny_sd_dir, capsys):
    from diffusers import StableDiffusionPipeline

    from erase.artifacts import module_sha256, save_artifact

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    base_hash = module_sha256(pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)  # the "erasure"
    save_artifact(tmp_path / "art", {"unet": pipe.unet},
                  {"method": "esd", "concept": "Fire", "kind": "style", "base_model": {"id": str(tiny_sd_dir)},
                   "cost": {"seconds": 42.0, "peak_memory_bytes": 1_500_000_000, "peak_memory_kind": "process_max_rss"}},
                  trained=["unet.conv_out.bias"], base_hashes={"unet": base_hash})
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["--artifact", tmp_path / "art", "--seeds", "188", "--steps", "1", "--no-clip",
                               "--no-fid", "--out", out, *CPU], capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["label"] == "esd" and [t["target"] for t in res["targets"]] == ["Fire"]
    assert res["model"]["artifact"] and res["model"]["base"] == str(tiny_sd_dir)
    e = res["efficiency"]
    assert e["time_s"] == 42.0 and e["memory_gb"] == 1.5 and 0 < e["storage_bytes"] < 10_000_000
    assert res["fid"] is None and res["clip"] is None
    # the same weights with a rewritten erase.json (another run's times) reuse the answer set ...
    meta = json.loads((tmp_path / "art" / "erase.json").read_text())
    meta["cost"]["seconds"] = 43.0
    (tmp_path / "art" / "erase.json").write_text(json.dumps(meta))
    rc, _, err = run_cli(["--artifact", tmp_path / "art", "--seeds", "188", "--steps", "1", "--no-clip",
                          "--no-fid", "--out", out, *CPU], capsys)
    assert rc == 0, err
    assert json.loads((out / "results.json").read_text())["answer_set"]["generated"] == 0
    # ... other weights in the same folder are refused, not mixed in
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)
    save_artifact(tmp_path / "art", {"unet": pipe.unet}, meta, trained=["unet.conv_out.bias"],
                  base_hashes={"unet": base_hash}, overwrite=True)
    rc, _, err = run_cli(["--artifact", tmp_path / "art", "--seeds", "188", "--steps", "1", "--no-clip",
                          "--no-fid", "--out", out, *CPU], capsys)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("unlearncanvas-eval: error:") and "was generated with model=" in last
