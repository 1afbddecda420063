"""The attack loop on a tiny pipeline with scripted judges: pre-ASR, stop on success, resume, soft bound."""

import numpy as np
import pytest
import torch

from erase.attacks.unlearndiffatk import Attack, AttackConfig, AttackError, target_latents
from pipelines.stable_diffusion import generate

PROMPTS = ["A Fish image in Candy style.", "A Boat image in Fire style.", "A Star image in Pop style."]
SEEDS = [1, 2, 3]
SMALL = AttackConfig(tokens=2, timesteps=3, steps_per_timestep=2, judge_steps=2, judge_guidance=3.0)


class Script:
    """A judge that answers from a script, call by call (one list of booleans per call)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, images):
        self.calls.append(len(images))
        return np.array(self.answers.pop(0))


@pytest.fixture
def targets(tiny_pipe):
    return target_latents(tiny_pipe, generate(tiny_pipe, PROMPTS, SEEDS, steps=2))


def test_pre_attack_successes_count_and_prompts_stop_at_their_first_success(tiny_pipe, targets):
    judge = Script([True, False, False], [True, False], [False], [False])
    out = Attack(tiny_pipe, PROMPTS, SEEDS, targets, judge, SMALL).run()
    assert judge.calls == [3, 2, 1, 1]  # solved prompts leave the batch; the last one runs out of blocks
    assert [(o.success_before, o.success_after) for o in out] == [(True, True), (False, True), (False, False)]
    assert out[0].token_ids is None and out[1].steps == 2 and out[2].steps is None
    assert len(out[1].token_ids) == 2 and out[1].tokens_text == tiny_pipe.tokenizer.decode(out[1].token_ids)
    assert len(out[2].token_ids) == 2  # the last attempt is kept for a failure too


def test_killed_attack_resumes_with_the_same_outcome(tiny_pipe, targets, tmp_path):
    answers = ([False, False, False], [False, False, False], [True, False, False], [False, True])
    straight = Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script(*answers), SMALL, state_dir=tmp_path / "a").run()

    def die(block, blocks, solved, prompts):
        if block == 1:
            raise KeyboardInterrupt  # killed after the first block was saved

    with pytest.raises(KeyboardInterrupt):
        Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script(*answers), SMALL, state_dir=tmp_path / "b",
               progress=die).run()
    resumed = Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script(*answers[2:]), SMALL, state_dir=tmp_path / "b").run()
    assert [o.token_ids for o in resumed] == [o.token_ids for o in straight]
    assert [o.success_after for o in resumed] == [o.success_after for o in straight] == [True, False, True]
    with pytest.raises(AttackError, match="another attack"):
        Attack(tiny_pipe, PROMPTS[:2], SEEDS[:2], targets[:2], Script(), SMALL, state_dir=tmp_path / "b").run()


def test_the_discrete_attack_lowers_the_loss_and_soft_keeps_vectors(tiny_pipe, targets):
    budget = AttackConfig(tokens=2, timesteps=1, steps_per_timestep=1, lr=0.05)
    attack = Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script(), budget)
    probs = torch.full((3, 2, attack.vocab), 1.0 / attack.vocab, requires_grad=True)
    attack._loss([0, 1, 2], probs, 500, torch.Generator().manual_seed(0)).backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0  # gradients reach the distribution
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())  # ... and never the model
    soft = Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script([False] * 3, [False] * 3), budget, kind="soft").run()
    assert all(o.token_ids is None and not o.success_after for o in soft)


@pytest.mark.parametrize("budget,kind,message", [
    (AttackConfig(tokens=0), "unlearndiffatk", "at least 1 token"),
    (AttackConfig(timesteps=0), "unlearndiffatk", "at least one step"),
    (AttackConfig(steps_per_timestep=0), "unlearndiffatk", "at least one step"),
    (AttackConfig(), "gcg", "unknown attack 'gcg'"),
])
def test_bad_settings_are_refused(tiny_pipe, targets, budget, kind, message):
    with pytest.raises(AttackError, match=message):
        Attack(tiny_pipe, PROMPTS, SEEDS, targets, Script(), budget, kind=kind)
