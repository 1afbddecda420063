"""The base-model figure script, at toy size: every prompt of the grid drawn once and judged."""

import json

from benchmarks.minicanvas_base import main
from erase.concepts import MINICANVAS


def test_grid_accuracy_of_a_model_folder(tmp_path, tiny_sd_dir, capsys):
    rc = main(["--model", str(tiny_sd_dir), "--seeds", "188", "--steps", "1", "--out", str(tmp_path / "grid")])
    assert rc == 0
    res = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert list(res["per_style"]) == list(MINICANVAS.themes) and list(res["per_object"]) == list(MINICANVAS.objects)
    assert 0 <= res["style_accuracy"] <= 1 and res["produced_by"]["samples"] == 110
    assert res["produced_by"]["prompts"].endswith("'A {object} image in {style} style.'")
    assert len(res["produced_by"]["model_sha256_16"]) == 16 and (tmp_path / "grid" / "grid.png").is_file()
    assert "style accuracy" in capsys.readouterr().out


def test_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "grid")]) == 2
    assert capsys.readouterr().err.startswith("error:") and not (tmp_path / "grid").exists()
