import numpy as np
import pytest
from PIL import Image

from benchmarks.unlearncanvas.answer_set import read_answer_set
from benchmarks.unlearncanvas.report import (
    GRID_PNG, grid_image, labelled_grid, results_markdown, summary_text, write_report)
from erase.concepts import MINICANVAS


def test_markdown_names_scorers_and_every_target(tiny_eval):
    res = tiny_eval.results
    md = results_markdown(res.to_json())
    assert md.startswith("# UnlearnCanvas evaluation: base (minicanvas)")
    assert "| Fire | style |" in md and "| Fish | object |" in md and "| **mean of 1 style targets** |" in md
    assert res.classifier["name"] in md and res.fid["features"] in md and res.clip["scorer"] in md
    assert f"| Candy | {100 * res.accuracy['style']['Candy']:.2f} |" in md


def test_summary_lines(tiny_eval):
    res, out = tiny_eval.results, tiny_eval.out
    text = summary_text(res.to_json(), out)
    assert text.splitlines()[0].startswith("base on minicanvas: 110 images (110 generated now), 2 DDIM steps")
    assert "style targets (1)" in text and "object targets (1)" in text and str(out / "results.json") in text


def test_grid_marks_the_targets_and_writes_atomically(tiny_eval, tmp_path):
    res, out = tiny_eval.results, tiny_eval.out
    answer = read_answer_set(out / "answer_set", MINICANVAS, [188], "png")
    grid = grid_image(answer, MINICANVAS, 188, ["Fire"], "title", thumb=8)
    assert grid.size[0] > 10 * 16 and np.asarray(grid).reshape(-1, 3).tolist().count([255, 0, 0]) > 0  # red frame
    write_report(res.to_json(), answer, MINICANVAS, tmp_path / "rep", 188)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(["results.json", "results.md", GRID_PNG])
    assert Image.open(tmp_path / "rep" / GRID_PNG).size == Image.open(out / GRID_PNG).size


def test_grid_labels_must_fit():
    with pytest.raises(ValueError, match="2 row and 3 column labels"):
        labelled_grid(np.zeros((2, 2, 4, 4, 3), np.uint8), ["a", "b"], ["x", "y", "z"])
