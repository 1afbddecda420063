import json

import numpy as np
import pytest

from benchmarks.unlearncanvas.metrics import (
    accuracy_table, efficiency_from_artifact, removal_accuracy, summarize, target_cells, target_mask,
    unlearncanvas_scores, wilson_interval)
from erase.artifacts import ArtifactError, EraseRecord
from erase.concepts import Domain

TOY = Domain("toy", themes=("Alpha", "Beta", "Gamma", "Photo"), objects=("Cat", "Dog", "Fox"), photo_theme="Photo")
STYLE_ACC = {"Alpha": 0.1, "Beta": 0.8, "Gamma": 0.6, "Photo": 0.2}
OBJECT_ACC = {"Cat": 0.9, "Dog": 0.3, "Fox": 0.6}


def test_style_target_by_hand():
    r = unlearncanvas_scores(STYLE_ACC, OBJECT_ACC, "alpha", TOY)
    assert r["kind"] == "style" and r["target"] == "Alpha"
    assert r["UA"] == pytest.approx(0.9)
    assert r["IRA"] == pytest.approx((0.8 + 0.6) / 2)  # the photo theme does not enter IRA
    assert r["CRA"] == pytest.approx((0.9 + 0.3 + 0.6) / 3)


def test_object_target_by_hand():
    r = unlearncanvas_scores(STYLE_ACC, OBJECT_ACC, "Dog", TOY)
    assert r["kind"] == "object"
    assert r["UA"] == pytest.approx(0.7)
    assert r["IRA"] == pytest.approx((0.9 + 0.6) / 2)
    assert r["CRA"] == pytest.approx((0.1 + 0.8 + 0.6) / 3)  # styles only, photo theme excluded


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ValueError, match="not a style or object"):
        unlearncanvas_scores(STYLE_ACC, OBJECT_ACC, "Photo", TOY)


def test_accuracy_table_from_images():
    """Acc_O counts every theme's row, the photo theme included; Acc_S every object's column."""
    dom = Domain("t2", themes=("A", "Photo"), objects=("x", "y"), photo_theme="Photo")
    # 2 seeds x 2 themes x 2 objects
    tt = np.array([0, 0, 1, 1] * 2)
    ot = np.array([0, 1, 0, 1] * 2)
    tp = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    op = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    table = accuracy_table(dom, tt, ot, tp, op)
    # theme A = images 0,1,4,5 -> preds 0,0,1,0 -> 3/4; Photo = 2,3,6,7 -> preds 0,1,1,1 -> 3/4
    assert table.style == {"A": 0.75, "Photo": 0.75}
    # object x = images 0,2,4,6 -> preds 0,0,0,1 -> 3/4; y = 1,3,5,7 -> preds 0,0,1,1 -> 2/4
    assert table.object == {"x": 0.75, "y": 0.5}
    assert table.images_per_theme == 4 and table.images_per_object == 4
    assert table.cells_object[1][1] == 0.5  # Photo/y: images 3 (wrong) and 7 (right)
    r = unlearncanvas_scores(table.style, table.object, "x", dom)
    assert r["UA"] == pytest.approx(0.25) and r["IRA"] == pytest.approx(0.5) and r["CRA"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no image prompted with"):
        accuracy_table(dom, tt[:2], ot[:2], tp[:2], op[:2])


def test_removal_accuracy():
    tt, ot = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    ra, n = removal_accuracy(tt, ot, np.array([0, 2, 1, 2]), ot, "Alpha", TOY)
    assert (ra, n) == (0.5, 2)
    ra, n = removal_accuracy(tt, ot, tt, np.array([0, 0, 1, 2]), "Dog", TOY)
    assert (ra, n) == (0.5, 2)


def test_target_cells_and_mask():
    cells = target_cells(TOY, "beta")
    assert cells.shape == (4, 3) and cells[1].all() and cells.sum() == 3
    assert target_cells(TOY, "Fox")[:, 2].all() and target_cells(TOY, "Fox").sum() == 4
    assert list(target_mask([0, 1, 1, 3], [2, 0, 2, 2], "Fox", TOY)) == [True, False, True, True]


def test_summarize_means_per_kind_and_fid():
    rows = [{"kind": "style", "UA": 1.0, "IRA": 0.5, "CRA": 0.25, "fid": 2.0, "clip_removal_accuracy": 0.5},
            {"kind": "style", "UA": 0.0, "IRA": 0.5, "CRA": 0.75, "fid": 4.0},
            {"kind": "object", "UA": 0.5, "IRA": 1.0, "CRA": 1.0}]
    s = summarize(rows)  # exact: means of binary fractions
    # CLIP only when every row has it; FID per kind (never one mean weighting styles against objects)
    assert s["style"] == {"UA": 0.5, "IRA": 0.5, "CRA": 0.5, "fid": 3.0, "targets": 2}
    assert s["object"] == {"UA": 0.5, "IRA": 1.0, "CRA": 1.0, "targets": 1} and "fid" not in s


def _write_record(folder, cost):
    folder.mkdir()
    record = EraseRecord(method="esd", method_kind="gradient", concept="Candy", concept_name="Candy", kind="style",
                         domain="minicanvas", config={}, preset=None, base_model={"id": "minicanvas-sd",
                                                                                   "type": "diffusion"},
                         seed=0, trainer=None, train={}, cost=cost,
                         components={"unet": {"format": "partial", "tensors": []}})
    (folder / "erase.json").write_text(json.dumps(record.to_json()))  # as erase.artifacts writes it


def test_efficiency_from_the_artifact_record(tmp_path):
    assert efficiency_from_artifact(None) is None
    _write_record(tmp_path / "a", {"seconds": 12.5, "peak_memory_bytes": 2_000_000_000,
                                   "peak_memory_kind": "process_max_rss", "artifact_bytes": 3_000_000, "device": "cpu"})
    e = efficiency_from_artifact(tmp_path / "a")
    assert e["time_s"] == 12.5 and e["memory_gb"] == 2.0  # 2e9 / 1e9: exact
    assert e["storage_gb"] == 3_000_000 / 1e9 and e["storage_bytes"] == 3_000_000
    assert "erase.json" in e["source"] and e["device"] == "cpu"
    _write_record(tmp_path / "b", {})  # no measured size: the folder's bytes
    e = efficiency_from_artifact(tmp_path / "b")
    assert e["storage_bytes"] == (tmp_path / "b" / "erase.json").stat().st_size and e["memory_gb"] is None
    with pytest.raises(ArtifactError, match="does not exist"):
        efficiency_from_artifact(tmp_path / "missing")


def test_wilson_interval_matches_the_published_formula_and_refuses_impossible_counts():
    # reference values: Wilson (1927) score interval, z = 1.96, as statsmodels' proportion_confint(method="wilson")
    for (k, n), expected in {(10, 20): (0.2993, 0.7007), (14, 20): (0.4810, 0.8545), (1, 20): (0.0089, 0.2361),
                             (0, 20): (0.0, 0.1611), (20, 20): (0.8389, 1.0)}.items():
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)
    for bad in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)
