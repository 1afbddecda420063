"""What a number was measured with travels with it: manifests, subsets, base-model baselines, relative paths."""

import json

import pytest
import torch

from benchmarks.unlearncanvas.evaluate import EvalConfig, evaluate
from benchmarks.unlearncanvas.leaderboard import main as merge_main
from benchmarks.unlearncanvas.run import main
from erase.artifacts import EraseRecord, save_artifact
from erase.provenance import module_sha256

CPU = ["--device", "cpu", "--no-progress"]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_score_only_takes_the_manifests_settings_and_refuses_contradictions(tiny_eval, tmp_path, capsys):
    """The tiny answer set was drawn with 2 steps, guidance 3.0 and seed 188; the defaults are 25, 5.0 and five
    seeds. Scoring it records the manifest's values and the model it names, not the defaults."""
    answers = tiny_eval.out / "answer_set"
    args = ["--score-only", "--answer-set", answers, "--target", "Fire", "--no-fid", "--out", tmp_path / "s", *CPU]
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "s" / "results.json").read_text())
    a = res["answer_set"]
    assert (a["steps"], a["guidance_scale"], a["seeds"], a["settings_from"]) == (2, 3.0, [188], "answer_set.json")
    assert res["comparable"]["sampler"]["steps"] == 2 and res["comparable"]["sampler"]["guidance_scale"] == 3.0
    assert res["model"]["key"] == tiny_eval.results.model["key"]  # the model named by the answer set
    assert "2 DDIM steps, guidance 3.0" in stdout
    # the same figures as the run that drew the images (same images, same judges)
    assert res["targets"][0]["UA"] == tiny_eval.results.target("Fire")["UA"]
    for extra, message in ((["--steps", "25"], "--steps 25 contradicts the answer set's steps 2"),
                           (["--guidance", "5"], "--guidance 5.0 contradicts"),
                           (["--photo-phrase", "Seed Images"], "contradicts the answer set's photo_phrase"),
                           (["--seeds", "288"], "--seeds 288 is not in the answer set")):
        rc, _, err = run_cli(args + extra, capsys)
        assert rc == 2 and message in err and err.count("\n") == 1, err
    rc, _, err = run_cli(args + ["--steps", "2", "--guidance", "3"], capsys)  # agreeing values are fine
    assert rc == 0, err


def test_a_subset_run_is_scored_on_its_cells_and_says_so(tiny_pipe, minicanvas_judges, tmp_path):
    cfg = EvalConfig(themes=["Candy", "fire"], objects=["Fish", "Star"], seeds=[188], targets=["Fire"], steps=2,
                     guidance=3.0, out=tmp_path / "sub", device="cpu", progress=False)
    res = evaluate(tiny_pipe, cfg, judges=minicanvas_judges)
    assert res.answer_set["images"] == 4 and res.answer_set["subset"] == {
        "themes": ["Candy", "Fire"], "objects": ["Fish", "Star"], "seeds": [188]}
    assert sorted(p.name for p in (tmp_path / "sub" / "answer_set").glob("*.png")) == [
        "Candy_Fish_seed188.png", "Candy_Star_seed188.png", "Fire_Fish_seed188.png", "Fire_Star_seed188.png"]
    acc = res.accuracy
    assert list(acc["style"]) == ["Candy", "Fire"] and list(acc["object"]) == ["Fish", "Star"]
    fire = res.target("Fire")  # IRA over the subset's other style, CRA over its two objects
    assert fire["UA"] == 1 - acc["style"]["Fire"] and fire["IRA"] == acc["style"]["Candy"]
    assert fire["CRA"] == pytest.approx((acc["object"]["Fish"] + acc["object"]["Star"]) / 2, rel=1e-12)
    assert fire["fid_generated"] == 2 and fire["fid_reference"] == 10  # the reference keeps the subset's cells
    assert res.comparable["protocol"] is False
    assert "**Subset, not the protocol**" in (tmp_path / "sub" / "results.md").read_text()
    with pytest.raises(ValueError, match="the subset must hold the target Fish"):
        EvalConfig(themes=["Candy", "Fire"], objects=["Star", "Moon"], targets=["Fish"], out=tmp_path).resolved()
    with pytest.raises(ValueError, match="not a theme of minicanvas"):
        EvalConfig(themes=["Fish"], out=tmp_path).resolved()


def _artifact(folder, pipe, base_id):
    base_hash = module_sha256(pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)  # the "erasure"
    record = EraseRecord(method="esd", method_kind="gradient", concept="Fire", concept_name="Fire", kind="style",
                         domain="minicanvas", config={"steps": 1}, preset=None,
                         base_model={"id": base_id, "type": "diffusion"}, seed=0, trainer=None, train={},
                         cost={"seconds": 1.0})
    save_artifact(folder, {"unet": pipe.unet}, record, trained=["unet.conv_out.bias"], base_hashes={"unet": base_hash})


def json_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from json_strings(k)
            yield from json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from json_strings(v)


def test_erased_figures_come_with_the_base_models_and_no_file_holds_an_absolute_path(
        tmp_path, tiny_sd_dir, fresh_tiny_pipe, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # every path below is given absolute; the files must hold them relative to here
    _artifact(work / "art", fresh_tiny_pipe, str(tiny_sd_dir))
    cache = work / "cache"
    common = ["--seeds", "188", "--steps", "1", "--baseline-cache", cache, *CPU]
    # the base model: its own counts are the baseline, and are cached
    rc, _, err = run_cli(["--model", tiny_sd_dir, "--target", "Fire", "--out", work / "base", *common], capsys)
    assert rc == 0, err
    base = json.loads((work / "base" / "results.json").read_text())
    assert base["clip"]["baseline"]["source"].startswith("this evaluation")
    assert base["targets"][0]["clip_removal_accuracy_change"] == 0 and len(list(cache.glob("*.json"))) == 1
    # the erased model reads them from the cache: its base columns are the base run's figures
    rc, stdout, err = run_cli(["--artifact", work / "art", "--out", work / "erased", *common], capsys)
    assert rc == 0, err
    erased = json.loads((work / "erased" / "results.json").read_text())
    assert erased["clip"]["baseline"]["source"] == "cache"
    row, base_row = erased["targets"][0], base["targets"][0]
    for k in ("UA", "clip_removal_accuracy", "clip_score_retained", "clip_score_forget"):
        assert row[f"{k}_base"] == base_row[k]  # the same cached counts: exact
        assert row[f"{k}_change"] == row[k] - row[f"{k}_base"]
    assert "(base model" in stdout and "(base " in (work / "erased" / "results.md").read_text()
    # no result file names a folder of this machine: not the temp folder, not any absolute path
    rc, _, err = run_cli(["merge", work / "base", work / "erased", "--out", work / "board", "--allow-subset"], capsys)
    assert rc == 0, err
    written = [work / d / f for d in ("base", "erased") for f in ("results.json", "results.md")]
    written += [work / "board" / "leaderboard.json", work / "board" / "leaderboard.md"]
    for path in written:
        text = path.read_text()
        assert str(tmp_path) not in text, path
        if path.suffix == ".json":
            assert not [s for s in json_strings(json.loads(text)) if s.startswith("/")], path
    assert erased["model"]["artifact"] == "art" and erased["answer_set"]["folder"] == "erased/answer_set"
    # without a cache entry the erased run draws the base answer set itself, caches the counts, drops the images
    fresh = work / "fresh-cache"
    rc, _, err = run_cli(["--artifact", work / "art", "--out", work / "erased2", "--seeds", "188", "--steps", "1",
                          "--baseline-cache", fresh, *CPU], capsys)
    assert rc == 0, err
    again = json.loads((work / "erased2" / "results.json").read_text())["targets"][0]
    assert json.loads((work / "erased2" / "results.json").read_text())["clip"]["baseline"]["source"].startswith(
        "computed in this run")
    assert [p.suffix for p in fresh.iterdir()] == [".json"]  # counts kept, base images removed
    # a freshly loaded base draws the same images here; one image's flip is the stated tolerance
    assert abs(again["clip_removal_accuracy_base"] - row["clip_removal_accuracy_base"]) <= 1 / 11
    assert again["clip_score_forget_base"] == pytest.approx(row["clip_score_forget_base"], abs=0.5)
    # --no-baseline: the column is left blank and the reason recorded
    rc, _, err = run_cli(["--artifact", work / "art", "--out", work / "erased3", "--seeds", "188", "--steps", "1",
                          "--no-baseline", *CPU], capsys)
    assert rc == 0, err
    none = json.loads((work / "erased3" / "results.json").read_text())
    assert none["clip"]["baseline"]["source"] == "not computed (--no-baseline)"
    assert "clip_removal_accuracy_base" not in none["targets"][0]


def test_merge_refuses_a_merge_of_an_old_results_file(tiny_eval, tmp_path, capsys):
    old = tiny_eval.results.to_json()
    old.pop("comparable")
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert merge_main([str(tmp_path / "old.json"), "--out", str(tmp_path / "lb")]) == 2
    assert "written before schema 2" in capsys.readouterr().err
