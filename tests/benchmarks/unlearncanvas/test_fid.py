import numpy as np
import pytest
import scipy.linalg

from benchmarks.unlearncanvas.fid import FIDError, InceptionFeatures, frechet_distance


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
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)  # mean shift only


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(FIDError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(FIDError, match="same D"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_inception_without_weights_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FIDError, match="does not exist"):
        InceptionFeatures(tmp_path / "pt_inception.pth")
    (tmp_path / "w.pth").write_bytes(b"not weights")
    with pytest.raises(FIDError):  # torch-fidelity missing, or an unreadable file: never a silent CLIP FID
        InceptionFeatures(tmp_path / "w.pth")
