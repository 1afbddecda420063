"""The playground's computing without the page: grid, verdicts, bounds, the bounded attack."""

import numpy as np
import pytest
import torch

from app.engine import BASE, Bounds, Playground, Verdict
from erase.artifacts import EraseRecord, save_artifact
from erase.attacks.tokens import encode_with_tokens
from erase.cli import main as erase_main
from erase.loading import load_erased_pipeline
from erase.provenance import module_sha256
from erase.trainer import MAX_SEED
from pipelines.stable_diffusion import generate

PROMPT = "A Fish image in Candy style."


def grey_levels(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def test_the_grid_draws_every_model_from_the_same_seeds_with_verdicts(tiny_pipe, artifact):
    folder, erased_pipe = artifact
    base_hash = module_sha256(tiny_pipe.unet)
    playground = Playground(None, [folder], base=tiny_pipe)  # the session's pipeline is the artifact's base
    label = next(iter(playground.erased))
    grid = playground.grid(PROMPT, 7, 3, 3, 5.0)
    assert grid.rows == [BASE, label] and grid.seeds == [7, 8, 9] and grid.notices == []
    want_base = generate(tiny_pipe, [PROMPT] * 3, [7, 8, 9], steps=3, guidance_scale=5.0)
    want_erased = generate(erased_pipe, [PROMPT] * 3, [7, 8, 9], steps=3, guidance_scale=5.0)
    # the same weights, prompt and seeds: the same pixels within one grey level (batch sizes may differ)
    assert grey_levels(np.stack(grid.images[BASE]), want_base) <= 1
    assert grey_levels(np.stack(grid.images[label]), want_erased) <= 1
    assert grey_levels(want_base, want_erased) > 1  # the erasure changes the picture by more than that
    # verdicts of the world's judges (MiniCanvas classifier and CLIP) under every image, the concept marked
    for row in grid.rows:
        assert len(grid.verdicts[row]) == 3
        for v in grid.verdicts[row]:
            assert v.concept == "Candy" and 0 <= v.concept_p <= 1 and 0 < v.style_p <= 1 and "/" in v.clip
    text = grid.verdicts[label][0].text(grid.verdicts[BASE][0])
    assert f"**Candy {grid.verdicts[label][0].concept_p:.2f} (base {grid.verdicts[BASE][0].concept_p:.2f})**" in text
    assert module_sha256(tiny_pipe.unet) == base_hash  # the erased copy did not leak into the shared base
    assert playground.erased[label].text_encoder is tiny_pipe.text_encoder  # unchanged components are shared


def test_each_erased_row_reads_against_the_base_probability_of_its_own_concept(tiny_pipe, artifact, tmp_path):
    """Two artifacts erasing different concepts: the Fish row's "(base p)" is the base image's Fish probability,
    not the Candy probability the base row shows for the first artifact."""
    import json
    import shutil

    fish = tmp_path / "esd-fish"
    shutil.copytree(artifact[0], fish)
    record = json.loads((fish / "erase.json").read_text())
    record.update(concept="Fish", concept_name="Fish", kind="object")
    (fish / "erase.json").write_text(json.dumps(record))
    playground = Playground(None, [artifact[0], fish], base=tiny_pipe)
    grid = playground.grid(PROMPT, 7, 1, 2, 5.0)
    base, candy_row, fish_row = (grid.verdicts[row][0] for row in grid.rows)
    assert base.concept == "Candy" and candy_row.concept == "Candy" and fish_row.concept == "Fish"
    assert f"(base {base.probabilities['Fish']:.2f})**" in fish_row.text(base)
    assert f"(base {base.probabilities['Candy']:.2f})**" in candy_row.text(base)
    # the random tiny model gives both about 0.00; with probabilities that differ, the wrong one shows
    base = Verdict("Candy", 0.97, "Fish", 0.55, None, "Candy", 0.97, {"Candy": 0.97, "Fish": 0.55})
    row = Verdict("Neon", 0.90, "Boat", 0.40, None, "Fish", 0.02, {"Candy": 0.01, "Fish": 0.02})
    assert row.text(base) == "Neon 0.90 · Boat 0.40 · **Fish 0.02 (base 0.55)**"


def test_absurd_inputs_are_bounded_with_a_notice_or_refused(tiny_pipe, artifact):
    playground = Playground(None, [artifact[0]], base=tiny_pipe, bounds=Bounds(max_seeds=2, max_steps=2))
    prompt, notices = playground.prompt_in_bounds("word " * 20_000)  # 100,000 characters
    assert "prompt cut to 2,000 of its 99,999 characters" in notices[0] and "77 tokens" in notices[1]
    assert len(tiny_pipe.tokenizer(prompt).input_ids) <= 77
    seeds, steps, guidance, notices = playground.numbers_in_bounds(-1, 100, 10_000, 1e9)
    assert seeds == [0, 1] and steps == 2 and guidance == 20.0 and len(notices) == 4
    seeds, *_ = playground.numbers_in_bounds(2 ** 70, 2, 1, 5.0)
    assert seeds == [MAX_SEED - 1, MAX_SEED]  # clamped exactly, no float rounding past the generator's range
    for bad in ("ten", float("nan"), None, float("inf")):
        with pytest.raises(ValueError, match="must be a number"):
            playground.numbers_in_bounds(bad, 1, 1, 5.0)
    with pytest.raises(ValueError, match="prompt"):
        playground.grid("   ", 1, 1, 1, 5.0)
    with pytest.raises(ValueError, match="unknown erased model"):
        playground.attack(PROMPT, "nothing", 1, 1, 5.0)


def test_the_attack_stops_at_its_time_budget_and_its_tokens_replay(tiny_pipe, artifact):
    # a budget every machine overruns with its first block, however fast: one block of ten, then it stops
    playground = Playground(None, [artifact[0]], base=tiny_pipe, bounds=Bounds(attack_seconds=1e-9))
    label = next(iter(playground.erased))
    seen = []
    result = playground.attack(PROMPT, label, 3, 2, 5.0, progress=lambda done, text: seen.append(done))
    assert seen == [0.1]
    assert len(result.token_ids) == 3 and result.tokens_text and not result.success_after
    # the tokens sit where the concept's word is (the embedded world's insertion), and the text says so
    assert result.adversarial_prompt == PROMPT.replace("Candy", f"{result.tokens_text} Candy")
    erased = playground.erased[label]
    embeds = encode_with_tokens(erased.tokenizer, erased.text_encoder, [PROMPT], torch.tensor([result.token_ids]),
                                [PROMPT.index("Candy")])
    replay = generate(erased, None, [3], steps=2, guidance_scale=5.0, prompt_embeds=embeds)[0]
    assert grey_levels(result.images["attacked"], replay) <= 1
    base = generate(tiny_pipe, [PROMPT], [3], steps=2, guidance_scale=5.0)[0]
    assert grey_levels(result.images["base"], base) <= 1
    assert set(result.verdicts) == {"base", "erased", "attacked"}


def test_an_advunlearn_text_encoder_shows_with_the_base_unet_shared(tiny_pipe, tiny_sd_dir, tmp_path):
    folder = tmp_path / "advunlearn-candy"
    assert erase_main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                       str(folder), "--steps", "2", "--quiet", "--threads", "1", "warmup=1", "attack_steps=1",
                       "ddim_steps=2", "retain_batch=2", "retain_prompts=domain", "lr=0.5"]) == 0
    playground = Playground(None, [folder], base=tiny_pipe)
    label = next(iter(playground.erased))
    erased = playground.erased[label]
    assert erased.unet is tiny_pipe.unet and erased.text_encoder is not tiny_pipe.text_encoder
    grid = playground.grid(PROMPT, 5, 1, 3, 5.0)
    want = generate(load_erased_pipeline(folder), [PROMPT], [5], steps=3, guidance_scale=5.0)[0]
    assert grey_levels(grid.images[label][0], want) <= 1  # one grey level


def test_the_unlearncanvas_world_uses_its_checkpoints_or_shows_images_only(tiny_pipe, tiny_sd_dir, tmp_path):
    """A Van Gogh erasure is judged by the released ViT format (tiny ViTs here); without them, images only."""
    from benchmarks.unlearncanvas.config import EvalConfig
    from tests.benchmarks.unlearncanvas.scorers.test_classifier import _vit_checkpoint

    record = EraseRecord(method="esd", method_kind="gradient", concept="Van_Gogh", concept_name="Van Gogh",
                         kind="style", domain="unlearncanvas", config={}, preset=None,
                         base_model={"id": str(tiny_sd_dir), "type": "diffusion"}, seed=0, trainer=None, train={},
                         cost={})
    save_artifact(tmp_path / "esd-van-gogh", {"unet": tiny_pipe.unet}, record, ["unet.conv_out.bias"],
                  base_hashes={"unet": module_sha256(tiny_pipe.unet)})
    bare = Playground(None, [tmp_path / "esd-van-gogh"], base=tiny_pipe)
    assert bare.classifier is None and "--style-classifier" in bare.judge_note
    assert bare.grid("A Dogs image in Van Gogh style.", 1, 1, 1, 5.0).verdicts == {}
    _vit_checkpoint(tmp_path / "style50.pth", 51)
    _vit_checkpoint(tmp_path / "style50_cls.pth", 20)
    judges = EvalConfig(domain="unlearncanvas", style_classifier=tmp_path / "style50.pth",
                        object_classifier=tmp_path / "style50_cls.pth", classifier_arch="vit_tiny_patch16_224",
                        use_clip=False, use_fid=False)
    judged = Playground(None, [tmp_path / "esd-van-gogh"], base=tiny_pipe, judges=judges)
    (verdict,) = judged.grid("A Dogs image in Van Gogh style.", 1, 1, 1, 5.0).verdicts[BASE]
    assert verdict.concept == "Van_Gogh" and 0 <= verdict.concept_p <= 1 and verdict.clip is None
