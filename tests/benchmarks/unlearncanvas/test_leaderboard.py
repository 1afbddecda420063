import json

import pytest

from benchmarks.unlearncanvas.leaderboard import COLUMNS, MergeError, leaderboard_rows, load_results, main


def _write(path, results):
    path.write_text(json.dumps(results))
    return path


def _protocol(results, key="model-a"):
    """A copy of the tiny evaluation (one seed: a subset run) that says it is a protocol run of model ``key``;
    merge's checks read only these records, so they can be tested without drawing 550 images per model."""
    r = json.loads(json.dumps(results.to_json()))
    r["answer_set"]["subset"], r["comparable"]["protocol"], r["model"]["key"] = None, True, key
    return r


def test_two_methods_become_two_rows(tiny_eval, tmp_path, capsys):
    res = tiny_eval.results
    base = _write(tmp_path / "base.json", _protocol(res))
    other = _protocol(res, "model-b")
    other["label"] = "other"
    other["targets"] = [dict(t, UA=1.0) for t in other["targets"]]
    assert main([str(base), str(_write(tmp_path / "other.json", other)), "--out", str(tmp_path / "lb")]) == 0
    board = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert board["columns"] == list(COLUMNS) and [r["method"] for r in board["rows"]] == ["base", "other"]
    base, row = board["rows"]
    # 100 * a fraction, both ways: the same two float operations
    assert base["St. UA"] == pytest.approx(100 * res.targets[0]["UA"], rel=1e-12) and row["St. UA"] == 100.0
    assert base["St. targets"] == 1 and base["Obj. targets"] == 1 and base["images"] == 110
    # style and object FID in their own columns: Fire's is the style one, Fish's the object one
    assert base["St. FID"] == pytest.approx(res.targets[0]["fid"], rel=1e-12)
    assert base["Obj. FID"] == pytest.approx(res.targets[1]["fid"], rel=1e-12) and base["Time (s)"] is None
    # CLIP removal with the base model's value beside it (this row is the base model: the two agree)
    assert base["St. CLIP rm."] == pytest.approx(100 * res.targets[0]["clip_removal_accuracy"], rel=1e-12)
    assert base["St. CLIP rm. base"] == base["St. CLIP rm."]
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "| base |" in md and "seeds 188" in md and "2 steps, guidance 3.0" in md
    assert res.comparable["classifier_sha256_16"] in md and board["shared"]["sampler.steps"] == 2
    assert (tmp_path / "lb" / "leaderboard.png").is_file()
    assert "| other |" in capsys.readouterr().out


def test_a_method_over_several_targets_is_averaged(tiny_eval):
    res = tiny_eval.results
    one, two = res.to_json(), res.to_json()
    two["targets"] = [dict(t, UA=t["UA"] + 0.5) for t in two["targets"]]
    (row,) = leaderboard_rows([one, two])
    assert row["results"] == 2 and row["St. targets"] == 2
    assert row["St. UA"] == pytest.approx(100 * (res.targets[0]["UA"] + 0.25), rel=1e-12)  # mean of x and x + 0.5


def _set(key, value):
    def change(r):
        *path, last = key.split(".")
        d = r["comparable"]
        for part in path:
            d = d[part]
        d[last] = value
    return change


@pytest.mark.parametrize("change,message", [
    (_set("domain", "unlearncanvas"), "domain differ"),
    (_set("seeds", [288]), "seeds differ"),
    (_set("themes", ["Candy", "Fire"]), "themes differ"),
    (_set("sampler.scheduler", "PNDM"), "scheduler differ"),
    (_set("sampler.steps", 25), "sampler steps differ"),
    (_set("sampler.guidance_scale", 5.0), "guidance scale differ"),
    (_set("sampler.image_size", 512), "image size differ"),
    (_set("sampler.photo_phrase", "Seed Images"), "photo phrase differ"),
    (_set("classifier_sha256_16", "0" * 16), "classifier weights differ"),
    (_set("clip_sha256_16", "0" * 16), "CLIP weights differ"),
    (_set("fid_features_sha256_16", "0" * 16), "FID feature weights differ"),
    (_set("fid_reference_sha256_16", "0" * 16), "FID reference set differ"),
    (_set("attack", {"attack": "soft", "config": {}}), None),  # the first result was not attacked: accepted
    (lambda r: r.update(schema="something/1"), "not an unlearncanvas-eval results.json"),
    (lambda r: r.pop("comparable"), "records no 'comparable' settings"),
])
def test_results_that_do_not_compare_are_refused(tiny_eval, tmp_path, capsys, change, message):
    first = _write(tmp_path / "a.json", _protocol(tiny_eval.results))
    other = _protocol(tiny_eval.results, "model-b")
    change(other)
    rc = main([str(first), str(_write(tmp_path / "x.json", other)), "--out", str(tmp_path / "lb")])
    if message is None:
        assert rc == 0
        return
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "lb").exists()


def test_two_attacks_that_differ_are_refused(tiny_eval, tmp_path, capsys):
    a, b = _protocol(tiny_eval.results), _protocol(tiny_eval.results, "model-b")
    a["comparable"]["attack"] = {"attack": "unlearndiffatk", "config": {"tokens": 3}}
    b["comparable"]["attack"] = {"attack": "unlearndiffatk", "config": {"tokens": 5}}
    assert main([str(_write(tmp_path / "a.json", a)), str(_write(tmp_path / "b.json", b)),
                 "--out", str(tmp_path / "lb")]) == 2
    assert "attack settings differ" in capsys.readouterr().err


def test_the_same_model_and_target_twice_is_refused(tiny_eval, tmp_path, capsys):
    """a, a, b once counted a twice (style UA 83.3 instead of 75.0); the same weights under a new label too."""
    a = _write(tmp_path / "a.json", _protocol(tiny_eval.results))
    again = _protocol(tiny_eval.results)
    again["label"] = "renamed"
    b = _write(tmp_path / "b.json", _protocol(tiny_eval.results, "model-b"))
    for pair in ([a, a, b], [a, _write(tmp_path / "again.json", again)]):
        assert main([*map(str, pair), "--out", str(tmp_path / "lb")]) == 2
        err = capsys.readouterr().err
        assert "repeats target Fire of model model-a" in err and err.count("\n") == 1
    assert main([str(a), str(b), "--out", str(tmp_path / "lb")]) == 0


def test_subset_results_are_refused_unless_allowed(tiny_eval, tmp_path, capsys):
    """The tiny evaluation drew one seed of five: a subset; merging it needs --allow-subset, and says so."""
    assert tiny_eval.results.answer_set["subset"] == {"seeds": [188]}
    assert tiny_eval.results.comparable["protocol"] is False
    assert main([str(tiny_eval.out), "--out", str(tmp_path / "lb")]) == 2
    assert "is a subset run (seeds 188), not the protocol" in capsys.readouterr().err
    assert main([str(tiny_eval.out), "--out", str(tmp_path / "lb"), "--allow-subset"]) == 0
    assert "**Subset runs, not the protocol.**" in (tmp_path / "lb" / "leaderboard.md").read_text()


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
    assert main([str(tiny_eval.out), str(path), "--out", str(tmp_path / "lb"), "--allow-subset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unlearncanvas-eval merge: error: ") and err.count("\n") == 1
    assert str(path) in err and message in err and not (tmp_path / "lb").exists()


def test_unreadable_or_missing_results(tmp_path):
    with pytest.raises(MergeError, match="no results.json"):
        load_results([])
    with pytest.raises(MergeError, match="cannot read"):
        load_results([tmp_path / "missing.json"])
