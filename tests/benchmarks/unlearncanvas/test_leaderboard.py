import json

import pytest

from benchmarks.unlearncanvas.leaderboard import COLUMNS, MergeError, leaderboard_rows, load_results, main


def _write(path, results):
    path.write_text(json.dumps(results))
    return path


def test_two_methods_become_two_rows(tiny_eval, tmp_path, capsys):
    res, out = tiny_eval.results, tiny_eval.out
    other = res.to_json()
    other["label"] = "other"
    other["targets"] = [dict(t, UA=1.0) for t in other["targets"]]
    assert main([str(out), str(_write(tmp_path / "other.json", other)), "--out", str(tmp_path / "lb")]) == 0
    board = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert board["columns"] == list(COLUMNS) and [r["method"] for r in board["rows"]] == ["base", "other"]
    base, row = board["rows"]
    # 100 * a fraction, both ways: the same two float operations
    assert base["St. UA"] == pytest.approx(100 * res.targets[0]["UA"], rel=1e-12) and row["St. UA"] == 100.0
    assert base["St. targets"] == 1 and base["Obj. targets"] == 1 and base["images"] == 110
    assert base["FID"] == pytest.approx(res.summary["fid"], rel=1e-12) and base["Time (s)"] is None
    assert "| base |" in (tmp_path / "lb" / "leaderboard.md").read_text()
    assert (tmp_path / "lb" / "leaderboard.png").is_file()
    assert "| other |" in capsys.readouterr().out


def test_a_method_over_several_targets_is_averaged(tiny_eval):
    res = tiny_eval.results
    one, two = res.to_json(), res.to_json()
    two["targets"] = [dict(t, UA=t["UA"] + 0.5) for t in two["targets"]]
    (row,) = leaderboard_rows([one, two])
    assert row["results"] == 2 and row["St. targets"] == 2
    assert row["St. UA"] == pytest.approx(100 * (res.targets[0]["UA"] + 0.25), rel=1e-12)  # mean of x and x + 0.5


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(domain="unlearncanvas"), "different domains"),
    (lambda r: r["fid"].update(features="FID, Inception"), "FID feature spaces differ"),
    (lambda r: r.update(schema="something/1"), "not an unlearncanvas-eval results.json"),
])
def test_results_that_do_not_compare_are_refused(tiny_eval, tmp_path, capsys, change, message):
    res, out = tiny_eval.results, tiny_eval.out
    other = json.loads(json.dumps(res.to_json()))
    change(other)
    assert main([str(out), str(_write(tmp_path / "x.json", other)), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "lb").exists()


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("domain"), "lacks key 'domain'"),
    (lambda r: r.pop("label"), "lacks key 'label'"),
    (lambda r: r["answer_set"].pop("images"), "'answer_set' lacks key 'images'"),
    (lambda r: r["classifier"].pop("name"), "'classifier' lacks key 'name'"),
    (lambda r: r["fid"].pop("features"), "'fid' lacks key 'features'"),
    (lambda r: r["targets"][1].pop("UA"), "targets[1] lacks key 'UA'"),
])
def test_a_hand_edited_results_json_is_one_line_naming_file_and_key(tiny_eval, tmp_path, capsys, change, message):
    edited = json.loads(json.dumps(tiny_eval.results.to_json()))
    change(edited)
    path = _write(tmp_path / "edited.json", edited)
    assert main([str(tiny_eval.out), str(path), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unlearncanvas-eval merge: error: ") and err.count("\n") == 1
    assert str(path) in err and message in err and not (tmp_path / "lb").exists()


def test_unreadable_or_missing_results(tmp_path):
    with pytest.raises(MergeError, match="no results.json"):
        load_results([])
    with pytest.raises(MergeError, match="cannot read"):
        load_results([tmp_path / "missing.json"])
