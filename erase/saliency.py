"""Gradient-saliency masks (SalUn, Fan et al., ICLR 2024): keep the weights with the largest |gradient|.

Ranking is global across all tensors, as ``SD/train-scripts/generate_mask.py`` (L22-211 @a6e89fd)
does. The original concatenates and argsorts ~860M values; here the threshold is an exact
k-th value for small models and a bisection on counts for large ones, so memory stays at one
tensor's worth beyond the gradients themselves.
"""

from __future__ import annotations

import torch

EXACT_LIMIT = 50_000_000  # above this many entries, find the threshold by bisection


def _count_at_least(grads: dict[str, torch.Tensor], tau: float) -> int:
    return int(sum(int((g >= tau).sum()) for g in grads.values()))


def topk_threshold(abs_grads: dict[str, torch.Tensor], keep: float, exact_limit: int = EXACT_LIMIT) -> float:
    """The value tau such that about ``keep`` of all entries satisfy |g| >= tau."""
    total = sum(g.numel() for g in abs_grads.values())
    k = max(1, min(total, round(keep * total)))
    if total <= exact_limit:
        flat = torch.cat([g.reshape(-1).float().cpu() for g in abs_grads.values()])
        return float(torch.kthvalue(flat, total - k + 1).values)
    lo, hi = 0.0, max(float(g.max()) for g in abs_grads.values())
    for _ in range(60):  # count(>= mid) is monotone decreasing in mid
        mid = (lo + hi) / 2
        if _count_at_least(abs_grads, mid) >= k:
            lo = mid
        else:
            hi = mid
    return lo


def global_topk_mask(grads: dict[str, torch.Tensor], keep: float = 0.5,
                     exact_limit: int = EXACT_LIMIT) -> dict[str, torch.Tensor]:
    """Boolean masks, True for the ``keep`` fraction of entries with the largest |gradient| overall."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not grads:
        raise ValueError("no gradients to rank")
    abs_grads = {n: g.detach().abs().float() for n, g in grads.items()}
    tau = topk_threshold(abs_grads, keep, exact_limit)
    if tau <= 0.0:  # ties at zero: never mark weights the loss does not touch as salient
        return {n: g > 0 for n, g in abs_grads.items()}
    return {n: g >= tau for n, g in abs_grads.items()}


def mask_fraction(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values()) / max(total, 1))
