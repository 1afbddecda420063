"""The figure script's code path, at toy size: erase-concept and evaluate() called directly, one results file."""

import json

import pytest

from benchmarks.erasure_minicanvas import RESULTS_FILE, _options, main
from erase.provenance import relative_path

ONE_CPU_THREAD = ["--device", "cpu", "--threads", "1"]  # the suite's thread count (the script's default is 2)


def test_options_apply_per_method_and_kind():
    opts = ["esd.style:lr=3e-4", "esd:steps=5", "salun:alpha=1", "esd.object:lr=1e-3"]
    assert _options(opts, "esd", "style") == {"lr": "3e-4", "steps": "5"}
    assert _options(opts, "esd", "object") == {"steps": "5", "lr": "1e-3"}
    assert _options(opts, "salun", "style") == {"alpha": "1"}


@pytest.mark.slow
def test_erase_then_evaluate_on_the_tiny_model(tmp_path, tiny_sd_dir, capsys):
    """ESD for one step (2 DDIM steps to reach x_t) on the tiny model, scored on one seed at one DDIM step."""
    results_file = tmp_path / "results.json"
    rc = main(["--model", str(tiny_sd_dir), "--methods", "esd", "--kinds", "style", "--style-target", "Fire",
               "--opt", "esd:steps=1", "--opt", "esd:ddim_steps=2", "--eval-seeds", "188", "--eval-steps", "1",
               "--work", str(tmp_path / "work"), "--results-file", str(results_file), *ONE_CPU_THREAD])
    out = capsys.readouterr().out
    assert rc == 1  # a random tiny model erases nothing: the thresholds fail, and the script says so
    assert "esd    style  Fire" in out and "FAIL" in out
    result = json.loads(results_file.read_text())
    (run,) = result["runs"]
    assert run["method"] == "esd" and run["target"] == "Fire" and run["kind"] == "style" and not run["passes"]
    assert run["config"]["steps"] == 1 and run["cli_options"] == {"steps": "1", "ddim_steps": "2"}
    assert run["cost"]["seconds"] > 0 and all(0 <= run[k] <= 1 for k in ("UA", "IRA", "CRA"))
    assert "fid" in run and len(run["per_theme_accuracy"]) == 11
    assert set(result["base_model"]["targets"]) == {"Fire"}
    produced = result["produced_by"]
    assert produced["model"] == relative_path(tiny_sd_dir) and produced["samples_per_model"] == 110
    committed = json.loads(RESULTS_FILE.read_text())  # the figures in README keep their keys
    # every key the committed figures have (newer runs may add some, e.g. the artifact's hash)
    assert list(result) == list(committed) and set(committed["runs"][0]) <= set(run)
    assert list(produced) == list(committed["produced_by"]) and list(result["base_model"]) == list(committed["base_model"])
    assert (tmp_path / "work" / "esd-fire" / "erase.json").is_file()
    assert (tmp_path / "work" / "eval-esd-fire" / "results.json").is_file()

    rc = main(["--model", str(tiny_sd_dir), "--methods", "esd", "--kinds", "object", "--object-target", "Fish",
               "--opt", "esd:steps=1", "--opt", "esd:ddim_steps=2", "--eval-seeds", "188", "--eval-steps", "1",
               "--work", str(tmp_path / "work"), "--results-file", str(results_file), *ONE_CPU_THREAD, "--merge"])
    merged = json.loads(results_file.read_text())  # --merge keeps the Fire run of the first invocation
    assert [(r["target"], r.get("from_earlier_run", False)) for r in merged["runs"]] == [("Fire", True), ("Fish", False)]
    assert set(merged["base_model"]["targets"]) == {"Fire", "Fish"}

    # --rescore: the same answer sets scored again (no erasure, no image drawn), base figures beside each run
    rc = main(["--rescore", "--work", str(tmp_path / "work"), "--results-file", str(results_file), *ONE_CPU_THREAD])
    assert rc == 0
    again = json.loads(results_file.read_text())
    for before, after in zip(merged["runs"], again["runs"]):
        # the same images and judges: equal up to one image's flip, the stated tolerance for a rescoring
        assert after["UA"] == pytest.approx(before["UA"], abs=1 / 110) and after["rescored_with"]["clip_sha256_16"]
        base = again["base_model"]["targets"][after["target"]]
        assert after["clip_removal_accuracy_base"] == base["clip_removal_accuracy"]
        assert after["erase_wall_seconds"] == before["erase_wall_seconds"]  # what judges do not decide is kept
    again["runs"][0]["artifact_sha256_16"] = "0" * 16  # a results file that does not match its answer sets
    results_file.write_text(json.dumps(again))
    with pytest.raises(SystemExit, match="was drawn by weights"):
        main(["--rescore", "--work", str(tmp_path / "work"), "--results-file", str(results_file), *ONE_CPU_THREAD])
