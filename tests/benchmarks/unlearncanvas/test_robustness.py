"""The robustness measure's plumbing on the tiny pipeline: prompt order, judge, pre-ASR and ASR counts."""

import numpy as np
import torch

from benchmarks.unlearncanvas.robustness import attack_prompts, attack_target, classifier_judge, without_target_word
from erase.attacks.unlearndiffatk import AttackBudget
from erase.concepts import MINICANVAS


class Fixed:
    """A judge network that assigns every image one fixed theme and one fixed object."""

    themes, objects = MINICANVAS.themes, MINICANVAS.objects

    def __init__(self, theme: str, obj: str):
        self.theme, self.obj = MINICANVAS.themes.index(theme), MINICANVAS.objects.index(obj)

    def predict(self, images):
        n = len(images)
        return torch.full((n,), self.theme), torch.full((n,), self.obj)


def test_prompts_are_the_targets_answer_set_prompts_in_a_fixed_order():
    style = attack_prompts(MINICANVAS, "candy", [188, 288])
    assert len(style) == 20 and style[0] == ("A Arrow image in Candy style.", 188)
    assert style[10] == ("A Arrow image in Candy style.", 288)
    obj = attack_prompts(MINICANVAS, "Fish", list(MINICANVAS.seeds))
    assert len(obj) == 55 and obj[0] == ("A Fish image in Candy style.", 188)
    assert attack_prompts(MINICANVAS, "Fish", [188], limit=3) == obj[:3]


def test_judge_says_success_when_the_target_is_assigned():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    assert classifier_judge(Fixed("Candy", "Fish"), MINICANVAS, "Candy")(images).tolist() == [True, True]
    assert classifier_judge(Fixed("Candy", "Fish"), MINICANVAS, "Boat")(images).tolist() == [False, False]


def test_pre_attack_successes_count_in_the_asr(tiny_pipe):
    budget = AttackBudget(tokens=1, timesteps=1, steps_per_timestep=1, judge_steps=1, judge_guidance=1.0)
    always = attack_target(tiny_pipe, tiny_pipe, MINICANVAS, "Candy", Fixed("Candy", "Fish"), budget,
                           "unlearndiffatk", [188], (1, 1.0), limit=3)
    assert (always["prompts"], always["pre_asr"], always["asr"]) == (3, 1.0, 1.0)
    never = attack_target(tiny_pipe, tiny_pipe, MINICANVAS, "Candy", Fixed("Fire", "Fish"), budget,
                          "unlearndiffatk", [188], (1, 1.0), limit=2)
    assert (never["pre_asr"], never["asr"]) == (0.0, 0.0)
    assert [len(p["token_ids"]) for p in never["per_prompt"]] == [1, 1]  # the last attempt is kept


def test_calibration_prompts_lose_the_target_word_only():
    assert without_target_word("A Fish image in Candy style.", MINICANVAS, "candy") == "A Fish image in style."
    assert without_target_word("A Fish image in Candy style.", MINICANVAS, "Fish") == "A image in Candy style."
