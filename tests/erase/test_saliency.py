import pytest
import torch

from erase.saliency import global_topk_mask, mask_fraction


def test_mask_is_global_not_per_layer_and_both_threshold_paths_agree():
    grads = {"a": torch.tensor([10.0, -9.0, 8.0, 0.1]), "b": torch.tensor([[0.2, -0.3], [7.0, 0.05]])}
    exact = global_topk_mask(grads, keep=0.5)
    assert exact["a"].tolist() == [True, True, True, False]  # layer a keeps 3 of 4: ranking is global
    assert exact["b"].tolist() == [[False, False], [True, False]]
    approx = global_topk_mask(grads, keep=0.5, exact_limit=0)
    assert all(torch.equal(exact[k], approx[k]) for k in grads)
    assert mask_fraction(exact) == 0.5


def test_zero_gradients_are_never_salient_and_bad_keep_is_refused():
    m = global_topk_mask({"a": torch.tensor([0.0, 0.0, 0.0, 1.0])}, keep=0.75)
    assert m["a"].tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        global_topk_mask({"a": torch.ones(2)}, keep=0.0)
