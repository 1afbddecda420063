"""The robustness measure's plumbing on the tiny pipeline: prompt order, judge, pre-ASR and ASR counts."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks.unlearncanvas.protocol import ATTACK_DEFAULTS
from benchmarks.unlearncanvas.run import main
from benchmarks.unlearncanvas.scorers.classifier import UnlearnCanvasClassifier
from benchmarks.unlearncanvas.robustness import attack_prompts, attack_target, classifier_judge, without_target_word
from erase.attacks.unlearndiffatk import AttackConfig
from erase.concepts import MINICANVAS, UNLEARNCANVAS
from tests.benchmarks.unlearncanvas.scorers.test_classifier import _vit_checkpoint


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
    budget = AttackConfig(tokens=1, timesteps=1, steps_per_timestep=1, judge_steps=1, judge_guidance=1.0)
    always = attack_target(tiny_pipe, tiny_pipe, MINICANVAS, "Candy", Fixed("Candy", "Fish"), budget,
                           "unlearndiffatk", [188], (1, 1.0), limit=3)
    assert (always["prompts"], always["pre_asr"], always["asr"]) == (3, 1.0, 1.0)
    never = attack_target(tiny_pipe, tiny_pipe, MINICANVAS, "Candy", Fixed("Fire", "Fish"), budget,
                          "unlearndiffatk", [188], (1, 1.0), limit=2)
    assert (never["pre_asr"], never["asr"]) == (0.0, 0.0)
    assert [len(p["token_ids"]) for p in never["per_prompt"]] == [1, 1]  # the last attempt is kept


def test_calibration_prompts_lose_the_target_word_only():
    # the offset is where the word was: the attack's tokens go there with --attack-insertion concept
    assert without_target_word("A Fish image in Candy style.", MINICANVAS, "candy") == ("A Fish image in style.", 16)
    assert without_target_word("A Fish image in Candy style.", MINICANVAS, "Fish") == ("A image in Candy style.", 2)
    assert "A Fish image in Candy style.".index("Candy") == 16


def test_eval_attack_writes_robustness_and_examples_and_a_rerun_keeps_them(tmp_path, tiny_sd_dir, capsys):
    out = tmp_path / "out"
    args = ["--model", tiny_sd_dir, "--seeds", "188", "--steps", "1", "--no-clip", "--no-fid", "--out", out,
            "--device", "cpu", "--no-progress", "--target", "Candy", "--attack", "unlearndiffatk",
            "--attack-prompts", "10", "--attack-timesteps", "2", "--attack-steps", "1", "--attack-tokens", "2"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    first = json.loads((out / "results.json").read_text())
    rob = first["robustness"]
    assert (rob["attack"], rob["tokens"], rob["insertion"]) == ("unlearndiffatk", 2, "concept")  # minicanvas default
    assert rob["config"]["judge_steps"] == 1 and rob["config"]["timesteps"] == 2  # judged with the eval's sampler
    (row,) = rob["targets"]
    assert row["target"] == "Candy" and row["prompts"] == 10 and rob["summary"]["style"]["asr"] == row["asr"]
    assert row["asr"] == sum(o["success_after"] for o in row["per_prompt"]) / 10
    # the pre-attack verdicts are the answer set's: with every Candy prompt of the seed, pre-ASR = 1 - UA
    assert row["pre_asr"] == pytest.approx(1 - first["targets"][0]["UA"], abs=1e-12)
    assert first["targets"][0]["ASR"] == row["asr"] and first["targets"][0]["pre_ASR"] == row["pre_asr"]
    for o in row["per_prompt"]:
        assert o["at"] == o["prompt"].index("Candy")  # the tokens sit where the style word is
        assert o["success_before"] or len(o["token_ids"]) == 2
    attacked = any(o["token_ids"] for o in row["per_prompt"])
    assert (out / "attack_examples.png").is_file() == attacked
    assert "## Robustness: unlearndiffatk" in (out / "results.md").read_text()
    assert "unlearndiffatk (2 tokens, concept), style targets (1)" in capsys.readouterr().out
    # a rerun reuses the answer set and the finished attack: the same outcomes, nothing attacked again
    assert main([str(a) for a in args]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["answer_set"]["generated"] == 0 and again["robustness"]["targets"] == rob["targets"]
    # merge shows the ASR column and refuses a result attacked with another budget
    other = tmp_path / "other"
    shutil.copytree(out, other)
    changed = json.loads((other / "results.json").read_text())
    changed["robustness"]["config"]["timesteps"] = 3
    changed["comparable"]["attack"]["config"]["timesteps"] = 3  # the record merge compares
    changed["label"], changed["model"]["key"] = "other", "another-model"
    (other / "results.json").write_text(json.dumps(changed))
    assert main(["merge", str(out), "--out", str(tmp_path / "board"), "--allow-subset"]) == 0
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert board["rows"][0]["St. ASR"] == 100 * row["asr"] and board["rows"][0]["Obj. ASR"] is None
    assert main(["merge", str(out), str(other), "--out", str(tmp_path / "mixed"), "--allow-subset"]) == 2
    assert "attack settings differ" in capsys.readouterr().err


def test_the_real_world_path_drives_the_unlearncanvas_vit_judges_with_a_prefix(tmp_path, tiny_pipe):
    """Same code on the UnlearnCanvas domain: ViT-L/16-style judges (tiny ViTs here), an SD 1.x-shaped
    pipeline, the reference's prefix insertion; only the budget is cut to one step."""
    _vit_checkpoint(tmp_path / "style.pth", len(UNLEARNCANVAS.themes))
    _vit_checkpoint(tmp_path / "object.pth", len(UNLEARNCANVAS.objects))
    judges = UnlearnCanvasClassifier(tmp_path / "style.pth", tmp_path / "object.pth", arch="vit_tiny_patch16_224")
    config = replace(ATTACK_DEFAULTS["unlearncanvas"], timesteps=1, steps_per_timestep=1, judge_steps=1)
    assert config.insertion == "prefix" and config.tokens == 3
    row = attack_target(tiny_pipe, tiny_pipe, UNLEARNCANVAS, "Van Gogh", judges, config, "unlearndiffatk", [188],
                        (1, 1.0), limit=2, judge_name="tiny ViTs")
    assert row["target"] == "Van_Gogh" and row["prompts"] == 2 and row["judge"] == "tiny ViTs"
    assert [o["prompt"] for o in row["per_prompt"]] == [p for p, _ in attack_prompts(UNLEARNCANVAS, "Van_Gogh",
                                                                                         [188], limit=2)]
    assert all(o["at"] == 0 and (o["success_before"] or len(o["token_ids"]) == 3) for o in row["per_prompt"])
