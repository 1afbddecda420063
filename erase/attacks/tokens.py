"""Adversarial tokens in a prompt: slots at BPE-token level, embeddings substituted inside the text encoder.

An attack never re-tokenises text (decode -> encode is not the identity for BPE): it builds the id
sequence ``[SOT, <prompt tokens before the offset>, slot_1 .. slot_k, <the rest>, EOT, pad ...]`` once
(offset 0: the reference's prefix), and either writes token ids into the slots (discrete) or replaces
the slots' token embeddings by free vectors (soft, or the straight-through one-hot mix of the discrete
attack) with a forward hook on the embedding layer, so the text encoder itself (positions, causal
mask, final norm) runs unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

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


def slotted_ids(tokenizer, prompts: list[str], k: int, at: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, L), slot positions (N, k)): k placeholder slots inserted into each prompt's tokens.

    ``at[i]`` is the character offset in ``prompts[i]`` where the slots go (None: all 0, right after
    SOT, the reference's prefix insertion). The text before and after the offset is tokenised apart,
    so an offset on a word boundary gives the prompt's own tokens around the slots. Prompts too long
    for ``L - k`` tokens are truncated before EOT, as the tokenizer truncates.
    """
    length = tokenizer.model_max_length
    if not 1 <= k <= length - 2:
        raise ValueError(f"the number of adversarial tokens must be between 1 and {length - 2}, got {k}")
    at = [0] * len(prompts) if at is None else list(at)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows, slots = [], []
    for prompt, offset in zip(prompts, at, strict=True):
        head = tokenizer(prompt[:offset], add_special_tokens=False).input_ids if offset else []
        tail = tokenizer(prompt[offset:], add_special_tokens=False).input_ids
        head = head[:length - 2 - k]
        tail = tail[:length - 2 - k - len(head)]
        row = [bos] + head + [eos] * k + tail + [eos]
        rows.append(row + [pad] * (length - len(row)))
        slots.append(list(range(1 + len(head), 1 + len(head) + k)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(slots, dtype=torch.long)


def with_tokens(ids: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``ids`` with ``tokens`` (N, k) written into each row's slots (N, k)."""
    return ids.scatter(1, slots.to(ids.device), tokens.to(ids))


@contextmanager
def substituted_embeddings(text_encoder: nn.Module, slots: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """Inside the block, the token embeddings at each row's ``slots`` (N, k) are ``vectors`` (N, k, D), differentiably."""
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        index = slots.to(output.device)[..., None].expand(-1, -1, output.shape[-1])
        return output.scatter(1, index, vectors.to(output.dtype))

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


def encode_with_tokens(tokenizer, text_encoder: nn.Module, prompts: list[str], tokens: torch.Tensor,
                       at: Sequence[int] | None = None) -> torch.Tensor:
    """The text encoder's states of ``prompts`` with token ids ``tokens`` (N, k) inserted at offsets ``at``:
    how an attack's stored result is replayed (ids, never re-tokenised text)."""
    ids, slots = slotted_ids(tokenizer, prompts, tokens.shape[-1], at)
    with torch.no_grad():
        return encode(text_encoder, with_tokens(ids, slots, tokens))


def project_to_simplex(p: torch.Tensor, max_rounds: int = 64) -> torch.Tensor:
    """Euclidean projection of each row of ``p`` onto the probability simplex: ``max(p - theta, 0)`` summing to 1.

    Michelot's fixed point (1986), exact: start from theta = (sum - 1) / n over all entries, keep the
    entries above theta, recompute theta over them, until the kept set stops changing (theta only
    grows, so this ends; rarely more than ten rounds). Each round is one pass over the row, with no sort
    of the 49,408-entry vocabulary. In floating point a row can instead fall into a cycle (its theta
    rounds back to an earlier value with the set still changing); such a row never settles, so the
    moment any row repeats an earlier unsettled state, or after ``max_rounds``, every row is solved by
    sorting (Duchi et al. 2008). Stopping at the repeat rather than at ``max_rounds`` gives the same
    result (a repeated state repeats forever) and saved about 50 passes in 3 % of an attack's steps.
    """
    rows = p.reshape(-1, p.shape[-1])
    theta = (rows.sum(-1) - 1) / rows.shape[-1]
    kept = torch.full((rows.shape[0],), rows.shape[-1], device=rows.device)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (theta, kept) of every earlier round
    for _ in range(max_rounds):
        above = rows > theta[:, None]
        count = above.sum(-1)
        unsettled = count != kept
        if not unsettled.any():
            break
        if any(((t == theta) & (k == kept) & unsettled).any() for t, k in seen):
            theta = _threshold(torch.sort(rows, dim=-1, descending=True).values)
            break
        seen.append((theta, kept))
        theta, kept = ((rows * above).sum(-1) - 1) / count.clamp(min=1), count
    else:
        theta = _threshold(torch.sort(rows, dim=-1, descending=True).values)
    return (rows - theta[:, None]).clamp_(min=0).view_as(p)


def _threshold(sorted_rows: torch.Tensor) -> torch.Tensor:
    """theta of the projection from each row's entries sorted in descending order (Duchi et al.)."""
    cumulative = sorted_rows.cumsum(-1) - 1
    index = torch.arange(1, sorted_rows.shape[-1] + 1, device=sorted_rows.device, dtype=sorted_rows.dtype)
    support = (sorted_rows - cumulative / index) > 0
    rho = support.to(sorted_rows.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where support holds
    return (cumulative.gather(-1, rho) / (rho + 1).to(sorted_rows.dtype)).squeeze(-1)


def straight_through(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled ids (N, k), one-hot (N, k, V) whose gradient flows to ``probs``): the forward pass sees
    the sampled tokens, the backward pass treats the sample as the distribution itself."""
    flat = probs.detach().reshape(-1, probs.shape[-1]).cpu().double().clamp_(min=0)
    empty = flat.sum(-1) <= 0
    if empty.any():  # an all-zero row samples uniformly
        flat[empty] += 1
    cdf = flat.cumsum(-1)  # inverse-CDF sampling: torch.multinomial is slow on 49,408 categories
    u = torch.rand(len(flat), 1, generator=generator, dtype=flat.dtype) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u).clamp(max=flat.shape[-1] - 1).view(probs.shape[:-1]).to(probs.device)
    hard = torch.zeros_like(probs).scatter_(-1, ids[..., None], 1.0)  # one-hot, without an int64 copy
    return ids, hard + probs - probs.detach()
