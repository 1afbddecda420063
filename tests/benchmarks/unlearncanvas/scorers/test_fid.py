import numpy as np
import pytest
import scipy.linalg
import torch

from benchmarks.unlearncanvas.scorers.fid import CellFrechetDistance, FIDError, InceptionFeatures, frechet_distance

# The per-cell path sums the same float64 statistics as torchmetrics, per cell and then over the kept
# cells, so the two differ by summation order only (~1e-15 relative per sum). The eigenvalues of
# S1 S2 amplify that by the covariances' condition number, which is below 1e3 for these full-rank
# 16-d Gaussians: 1e-9 relative bounds the difference with a wide margin and still catches any
# wrong mean, covariance normalisation (N vs N-1) or cell bookkeeping (those change the value at 1e-3).
AGREE = 1e-9
ROWS, COLS, DIM = 3, 4, 16


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_frechet_distance_matches_scipy_on_random_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.3
    # scipy's sqrtm (Schur) and torchmetrics' eigenvalues agree to ~1e-10 here; 1e-6 as before
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)  # sqrt of eigenvalues of S^2: ~1e-8 noise
    assert frechet_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)  # mean shift only


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(FIDError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(FIDError, match="same D"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def _labelled(n: int, seed: int, shift: float):
    """Features whose distribution depends on the cell, so leaving cells out changes the distance."""
    g = torch.Generator().manual_seed(seed)
    themes, objects = torch.randint(0, ROWS, (n,), generator=g), torch.randint(0, COLS, (n,), generator=g)
    feats = torch.randn(n, DIM, generator=g, dtype=torch.float64) + shift
    feats[:, 0] += themes * 0.5
    feats[:, 1] -= objects * 0.7
    return feats, themes, objects


@pytest.fixture(scope="module")
def sets():
    return _labelled(400, 0, 0.0), _labelled(300, 1, 0.2)


def _fill(metric, sets, parts: int = 1, part: int = 0):
    for real, (f, t, o) in zip((True, False), sets):
        sl = slice(part, None, parts)
        for i in range(0, len(f[sl]), 64):  # several updates, as batches arrive
            metric.update(f[sl][i:i + 64], t[sl][i:i + 64], o[sl][i:i + 64], real=real)
    return metric


def _keep(kind: str, index: int) -> np.ndarray:
    keep = np.ones((ROWS, COLS), dtype=bool)
    if kind == "row":
        keep[index] = False
    elif kind == "col":
        keep[:, index] = False
    return keep


@pytest.mark.parametrize("layout", ["cells", "targets"])
@pytest.mark.parametrize("kind,index", [("all", 0), ("row", 1), ("col", 2)])
def test_per_cell_distance_agrees_with_torchmetrics_on_the_kept_images(sets, layout, kind, index):
    targets = [~_keep("row", 1), ~_keep("col", 2)]
    metric = _fill(CellFrechetDistance(ROWS, COLS, DIM, layout=layout, targets=targets), sets)
    keep = _keep(kind, index)
    (rf, rt, ro), (ff, ft, fo) = sets
    real_kept, fake_kept = keep[rt.numpy(), ro.numpy()], keep[ft.numpy(), fo.numpy()]
    want = frechet_distance(rf[real_kept], ff[fake_kept])
    value, generated, reference = metric.distance(keep)
    assert value == pytest.approx(want, rel=AGREE)
    assert (generated, reference) == (int(fake_kept.sum()), int(real_kept.sum()))
    if kind == "all":  # compute() is the all-cells distance
        assert float(metric.compute()) == pytest.approx(want, rel=AGREE)
    else:  # leaving the cells out matters: the cell-dependent shift is visible in the distance
        assert abs(value - frechet_distance(rf, ff)) > 1e-3


def test_states_of_two_processes_sum_to_the_single_process_result(sets):
    """merge_state is what torchmetrics' distributed sync does: a sum of every state."""
    whole = _fill(CellFrechetDistance(ROWS, COLS, DIM), sets)
    first, second = (_fill(CellFrechetDistance(ROWS, COLS, DIM), sets, parts=2, part=p) for p in (0, 1))
    first.merge_state(second)
    for keep in (None, _keep("row", 0), _keep("col", 3)):
        assert first.distance(keep)[0] == pytest.approx(whole.distance(keep)[0], rel=AGREE)
        assert first.distance(keep)[1:] == whole.distance(keep)[1:]


def test_subsets_a_layout_cannot_measure_and_too_few_images_are_errors(sets):
    metric = _fill(CellFrechetDistance(ROWS, COLS, DIM, layout="targets", targets=[~_keep("row", 1)]), sets)
    with pytest.raises(FIDError, match="all but one target"):
        metric.distance(_keep("col", 0))
    lonely = CellFrechetDistance(ROWS, COLS, DIM)
    lonely.update(torch.zeros(3, DIM), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), real=True)
    lonely.update(torch.zeros(3, DIM), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), real=False)
    with pytest.raises(FIDError, match="at least 2 images"):
        lonely.distance(_keep("row", 0))  # one image of each side left
    with pytest.raises(FIDError, match="features must be"):
        lonely.update(torch.zeros(2, DIM + 1), torch.tensor([0, 0]), torch.tensor([0, 0]), real=True)
    with pytest.raises(ValueError, match="outside the 3x4 grid"):
        lonely.update(torch.zeros(1, DIM), torch.tensor([3]), torch.tensor([0]), real=True)


def test_state_budget_picks_the_target_layout_for_inception_on_unlearncanvas():
    assert CellFrechetDistance.state_bytes(11, 10, 64) < 10 * 2**20  # MiniCanvas CLIP: one slot per cell
    assert CellFrechetDistance.state_bytes(51, 20, 2048) > 60 * 2**30  # Inception x 1020 cells would not fit


def test_inception_without_weights_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FIDError, match="does not exist"):
        InceptionFeatures(tmp_path / "pt_inception.pth")
    (tmp_path / "w.pth").write_bytes(b"not weights")
    with pytest.raises(FIDError):  # torch-fidelity missing, or an unreadable file: never a silent CLIP FID
        InceptionFeatures(tmp_path / "w.pth")
