"""The robustness benchmark's README tables: printed from a results file alone, each rate with its interval."""

import json

from benchmarks.robustness_minicanvas import main


def test_table_mode_prints_the_results_file_with_wilson_intervals_and_runs_nothing(tmp_path, capsys):
    row = {"target": "Star", "kind": "object", "prompts": 20, "pre_asr": 0.0, "seconds": 74.0, "model": "esd"}
    report = {"oracle": [{"target": "Star", "prefix": 0.05, "concept": 0.87, "random_tokens": 0.07}],
              "calibration": [dict(row, attack="unlearndiffatk", asr=0.76, prompts=55)],
              "erased": [dict(row, attack="unlearndiffatk", asr=0.5), dict(row, attack="soft", asr=0.7)]}
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps(report))
    assert main(["--table", "--results-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| Star | 5 % / 87 % | 7.0 % | 76 % of 55 (74) |" in out
    assert "| esd | Star | 20 | 0 % | 50 % [30-70] (74) | 70 % [48-85] (74) |" in out
    assert list(tmp_path.iterdir()) == [path]  # nothing written beside it
