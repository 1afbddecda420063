import numpy as np
import pytest
import torch

from benchmarks.unlearncanvas.metrics import accuracy_table, removal_accuracy, removal_from_counts, table_from_counts
from benchmarks.unlearncanvas.scorers.cells import CellAccuracy, CellMean
from erase.concepts import Domain

TOY = Domain("toy", themes=("Alpha", "Beta", "Photo"), objects=("Cat", "Dog", "Fox", "Owl"), photo_theme="Photo")


def _labels(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    t, o = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    right = torch.rand(n, generator=g)
    tp = torch.where(right < 0.7, t, (t + 1) % 3)  # about 70 % right, wrong ones point elsewhere
    op = torch.where(right > 0.2, o, (o + 1) % 4)
    return t, o, tp, op


def test_counts_per_cell_give_the_per_image_accuracies_exactly():
    """Integer counts, one division per number: the same float as the per-image mean, bit for bit."""
    t, o, tp, op = _labels()
    metric = CellAccuracy(3, 4)
    for i in range(0, 200, 64):
        metric.update(tp[i:i + 64], op[i:i + 64], t[i:i + 64], o[i:i + 64])
    total, style_ok, object_ok = metric.counts()
    assert total.sum() == 200 and total.shape == (3, 4)
    table = table_from_counts(TOY, total, style_ok, object_ok)
    assert table == accuracy_table(TOY, t, o, tp, op)
    assert table.style["Alpha"] == float(np.mean(tp.numpy()[t.numpy() == 0] == 0))  # the old per-image formula
    acc = metric.compute()
    assert acc["style"].tolist() == [table.style[k] for k in TOY.themes]
    for target in ("Beta", "Owl"):
        want = removal_accuracy(t, o, tp, op, target, TOY)
        assert removal_from_counts(total, style_ok, object_ok, target, TOY) == want


def test_two_processes_sum_to_one():
    t, o, tp, op = _labels(seed=3)
    whole, a, b = CellAccuracy(3, 4), CellAccuracy(3, 4), CellAccuracy(3, 4)
    whole.update(tp, op, t, o)
    a.update(tp[::2], op[::2], t[::2], o[::2])
    b.update(tp[1::2], op[1::2], t[1::2], o[1::2])
    a.merge_state(b)
    assert all(np.array_equal(x, y) for x, y in zip(a.counts(), whole.counts()))


def test_cell_mean_over_kept_cells():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    themes, objects = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3])
    metric = CellMean(3, 4)
    metric.update(values, themes, objects)
    keep = np.ones((3, 4), dtype=bool)
    keep[2] = False
    # exact: small integers in float64
    assert metric.mean(keep) == 2.0 and metric.mean() == 4.0 and float(metric.compute()) == 4.0
    with pytest.raises(ValueError, match="no image"):
        metric.mean(np.zeros((3, 4), dtype=bool))


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="predictions for"):
        CellAccuracy(3, 4).update(torch.zeros(2), torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="outside the 3x4 grid"):
        CellMean(3, 4).update(torch.ones(1), torch.tensor([0]), torch.tensor([4]))
