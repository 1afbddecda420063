"""Adversarial tokens in a prompt: slots at BPE-token level, embeddings substituted inside the text encoder.

An attack never re-tokenises text (decode -> encode is not the identity for BPE): it builds the id
sequence ``[SOT, slot_1 .. slot_k, prompt tokens, EOT, pad ...]`` once, and either writes token ids
into the slots (discrete) or replaces the slots' token embeddings by free vectors (soft, or the
straight-through one-hot mix of the discrete attack) with a forward hook on the embedding layer,
so the text encoder itself (positions, causal mask, final norm) runs unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class VocabularyError(ValueError):
    """The tokenizer and the text encoder do not share a vocabulary the attack can search; one line."""


def check_vocabulary(tokenizer, text_encoder) -> int:
    """The vocabulary size both share; refuse a pair where ids would index the wrong embeddings."""
    table = text_encoder.get_input_embeddings()
    size = len(tokenizer)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise VocabularyError("the tokenizer has no start/end-of-text tokens; the attack needs CLIP's BPE vocabulary")
    if table.num_embeddings < size:
        raise VocabularyError(f"the tokenizer has {size} tokens but the text encoder embeds only "
                              f"{table.num_embeddings}; the attack needs their shared vocabulary")
    return size


def slotted_ids(tokenizer, prompts: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, L), slot positions (k,)): k placeholder slots right after SOT, the prompt's tokens after them.

    Prompts too long for ``L - k`` tokens are truncated before EOT, as the tokenizer truncates.
    """
    length = tokenizer.model_max_length
    if not 1 <= k <= length - 2:
        raise ValueError(f"the number of adversarial tokens must be between 1 and {length - 2}, got {k}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for prompt in prompts:
        body = tokenizer(prompt, add_special_tokens=False).input_ids[:length - 2 - k]
        row = [bos] + [eos] * k + body + [eos]
        rows.append(row + [pad] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long), torch.arange(1, k + 1)


def with_tokens(ids: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``ids`` with ``tokens`` (N, k) written into the slots."""
    out = ids.clone()
    out[:, slots] = tokens.to(out)
    return out


@contextmanager
def substituted_embeddings(text_encoder: nn.Module, slots: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """Inside the block, the token embeddings at ``slots`` are ``vectors`` (N, k, D), differentiably."""
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, slots] = vectors.to(out.dtype)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(text_encoder: nn.Module, ids: torch.Tensor, slots: torch.Tensor | None = None,
           vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (N, L, D), with the slots' embeddings replaced when ``vectors`` is given."""
    ids = ids.to(text_encoder.device)
    if vectors is None:
        return text_encoder(ids)[0]
    with substituted_embeddings(text_encoder, slots, vectors):
        return text_encoder(ids)[0]


def project_to_simplex(p: torch.Tensor, top: int = 1024) -> torch.Tensor:
    """Euclidean projection of each row of ``p`` onto the probability simplex (Duchi et al. 2008, exact).

    The threshold depends only on the largest entries, so it is first computed from the ``top``
    largest ones and checked: exact whenever the projection keeps fewer than ``top`` entries, which
    after the first steps of an attack is every row; otherwise the whole row is sorted.
    """
    rows = p.reshape(-1, p.shape[-1])
    k = min(top, rows.shape[-1])
    largest = torch.topk(rows, k, dim=-1).values
    theta = _threshold(largest)
    if k < rows.shape[-1]:
        unsure = largest[:, -1] > theta  # the k-th entry survives: the support may extend beyond it
        if unsure.any():
            theta[unsure] = _threshold(torch.sort(rows[unsure], dim=-1, descending=True).values)
    return (rows - theta[:, None]).clamp(min=0).view_as(p)


def _threshold(sorted_rows: torch.Tensor) -> torch.Tensor:
    """theta of the projection from each row's entries sorted in descending order."""
    cumulative = sorted_rows.cumsum(-1) - 1
    index = torch.arange(1, sorted_rows.shape[-1] + 1, device=sorted_rows.device, dtype=sorted_rows.dtype)
    support = (sorted_rows - cumulative / index) > 0
    rho = support.to(sorted_rows.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where support holds
    return (cumulative.gather(-1, rho) / (rho + 1).to(sorted_rows.dtype)).squeeze(-1)


def straight_through(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled ids (N, k), one-hot (N, k, V) whose gradient flows to ``probs``): the forward pass sees
    the sampled tokens, the backward pass treats the sample as the distribution itself."""
    flat = probs.detach().reshape(-1, probs.shape[-1]).clamp(min=0).cpu().double()
    flat = flat + (flat.sum(-1, keepdim=True) <= 0).to(flat.dtype)  # an all-zero row samples uniformly
    cdf = flat.cumsum(-1)  # inverse-CDF sampling: torch.multinomial is slow on 49,408 categories
    u = torch.rand(len(flat), 1, generator=generator, dtype=flat.dtype) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u).clamp(max=flat.shape[-1] - 1).view(probs.shape[:-1]).to(probs.device)
    hard = torch.nn.functional.one_hot(ids, probs.shape[-1]).to(probs.dtype)
    return ids, hard + probs - probs.detach()
