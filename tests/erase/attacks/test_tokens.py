"""Token slots, embedding substitution, simplex projection and the straight-through estimator."""

import pytest
import torch

from erase.attacks.tokens import (VocabularyError, _threshold, check_vocabulary, encode, project_to_simplex, slotted_ids,
                                  straight_through, with_tokens)


def test_simplex_projection_hand_computed_case():
    # (0.5, 1.0, -0.5): sorted 1.0, 0.5, -0.5; rho = 2, theta = (1.5 - 1) / 2 = 0.25 -> (0.25, 0.75, 0)
    out = project_to_simplex(torch.tensor([[0.5, 1.0, -0.5]]))
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75, 0.0]]))  # exact in float32 for these values
    rows = project_to_simplex(torch.randn(6, 2, 50))
    assert (rows >= 0).all() and torch.allclose(rows.sum(-1), torch.ones(6, 2), atol=1e-5)
    on = torch.full((1, 4), 0.25)
    torch.testing.assert_close(project_to_simplex(on), on, rtol=0, atol=1e-7)  # a point on the simplex stays put
    for rows in (torch.rand(3, 2000) * 1e-3, torch.randn(4, 3000) * 3):  # wide and narrow supports
        # the fixed point agrees with the sorting solution (forced by allowing one round only)
        torch.testing.assert_close(project_to_simplex(rows), project_to_simplex(rows, max_rounds=1),
                                   rtol=0, atol=1e-6)
        assert torch.allclose(project_to_simplex(rows).sum(-1), torch.ones(len(rows)), atol=1e-5)


def test_slots_sit_at_bpe_token_level_after_sot(clip_tokenizer):
    ids, slots = slotted_ids(clip_tokenizer, ["A Fish image in Candy style."], 3)
    plain = clip_tokenizer("A Fish image in Candy style.").input_ids
    assert slots.tolist() == [[1, 2, 3]] and ids.shape == (1, 77)
    assert ids[0, 0] == plain[0] and ids[0, 4:4 + len(plain) - 1].tolist() == plain[1:]
    chosen = with_tokens(ids, slots, torch.tensor([[100, 200, 300]]))
    assert chosen[0, 1:4].tolist() == [100, 200, 300] and torch.equal(chosen[0, 4:], ids[0, 4:])  # integer ids
    long_ids, _ = slotted_ids(clip_tokenizer, ["word " * 200], 5)
    assert long_ids.shape == (1, 77) and long_ids[0, -1] == clip_tokenizer.eos_token_id
    with pytest.raises(ValueError, match="between 1 and 75"):
        slotted_ids(clip_tokenizer, ["x"], 0)


def test_slots_go_at_a_character_offset_with_the_prompt_s_own_tokens_around_them(clip_tokenizer):
    prompts = ["A Fish image in Candy style.", "A big red Fish image in Candy style."]
    ids, slots = slotted_ids(clip_tokenizer, prompts, 2, at=[p.index("Candy") for p in prompts])
    for row, prompt, where in zip(ids, prompts, slots):
        plain = clip_tokenizer(prompt).input_ids  # SOT, a, ..., fish, image, in, candy, style, ., EOT
        first = int(where[0])
        assert where.tolist() == [first, first + 1] and plain[first] == clip_tokenizer.convert_tokens_to_ids("candy</w>")
        assert row[:first].tolist() == plain[:first] and row[first + 2:first + 2 + len(plain) - first].tolist() == plain[first:]
    assert slots[1, 0] == slots[0, 0] + 2  # two more words before the offset
    chosen = with_tokens(ids, slots, torch.tensor([[7, 8], [9, 10]]))
    assert chosen.gather(1, slots).tolist() == [[7, 8], [9, 10]]


def test_substituting_the_slots_own_embeddings_reproduces_the_encoder(tiny_pipe):
    te = tiny_pipe.text_encoder
    ids, slots = slotted_ids(tiny_pipe.tokenizer, ["A Fish image"], 2)
    ids = with_tokens(ids, slots, torch.tensor([[320, 1125]]))
    with torch.no_grad():
        same = encode(te, ids, slots, te.get_input_embeddings().weight[ids.gather(1, slots)])
        plain = encode(te, ids)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # the same embeddings: the same computation
    with torch.no_grad():
        other = encode(te, ids, slots, torch.zeros(1, 2, te.config.hidden_size))
    assert not torch.allclose(other, plain)


def test_straight_through_gradient_reaches_the_distribution(tiny_pipe):
    probs = torch.full((2, 3, 50), 1 / 50, requires_grad=True)
    ids, one_hot = straight_through(probs, torch.Generator().manual_seed(0))
    # exact: integer ids, and a one-hot row holds a single 1.0 and zeros, whose sum is exactly 1
    assert torch.equal(one_hot.detach().argmax(-1), ids) and one_hot.detach().sum(-1).eq(1).all()
    peaked = torch.zeros(1, 1, 50)
    peaked[0, 0, 7] = 1.0
    assert straight_through(peaked, torch.Generator().manual_seed(1))[0].item() == 7  # samples follow P
    (one_hot * torch.arange(50.0)).sum().backward()
    # exact: the straight-through backward is the identity, and 0..49 are exactly representable
    assert torch.equal(probs.grad, torch.arange(50.0).expand(2, 3, 50))


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tiny_pipe):
    small = torch.nn.Embedding(1000, 16)

    class Encoder:
        def get_input_embeddings(self):
            return small

    with pytest.raises(VocabularyError, match="embeds only 1000"):
        check_vocabulary(tiny_pipe.tokenizer, Encoder())
    assert check_vocabulary(tiny_pipe.tokenizer, tiny_pipe.text_encoder) == 49408


def test_projection_equals_the_plain_fixed_point_loop():
    """The repeat check only stops rows that would cycle until ``max_rounds``; everything else is the plain
    loop's arithmetic, so the two agree bit for bit (same ops on the same tensors in one process)."""
    def plain(p, max_rounds=64):
        rows = p.reshape(-1, p.shape[-1])
        theta, kept = (rows.sum(-1) - 1) / rows.shape[-1], torch.full((rows.shape[0],), rows.shape[-1])
        for _ in range(max_rounds):
            above = rows > theta[:, None]
            count = above.sum(-1)
            if torch.equal(count, kept):
                break
            theta, kept = ((rows * above).sum(-1) - 1) / count.clamp(min=1), count
        else:
            theta = _threshold(torch.sort(rows, dim=-1, descending=True).values)
        return (rows - theta[:, None]).clamp(min=0).view_as(p)

    generator = torch.Generator().manual_seed(0)
    uniform = torch.full((8, 3, 4096), 1 / 4096)
    for scale in (1e-2, 1e-4, 1e-6):  # an Adam step away from the attack's uniform start, at several sizes
        p = uniform - scale * torch.randn(uniform.shape, generator=generator).sign()
        assert torch.equal(project_to_simplex(p), plain(p))
