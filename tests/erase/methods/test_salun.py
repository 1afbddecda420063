import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from benchmarks.unlearncanvas.minicanvas import write_dataset
from conftest import tiny_sd_components
from erase.artifacts import read_extra
from erase.cli import main
from erase.methods import MethodConfigError
from erase.methods.base import build_config
from erase.methods.salun import SalUn, SalUnConfig
from erase.trainer import TrainerConfig, run_method

SMALL = {"forget_images": 4, "retain_images": 4, "batch_size": 2, "gen_steps": 2}


def _method(tokenizer, concept="Candy", kind="style", **options):
    pipe = StableDiffusionPipeline(**tiny_sd_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return SalUn(build_config(SalUnConfig, {**SMALL, **options}), concept, kind, pipe)


def test_defaults_cite_the_paper_setting():
    cfg = SalUnConfig()
    assert (cfg.mask_keep, cfg.mask_guidance, cfg.lr, cfg.batch_size, cfg.alpha) == (0.5, 7.5, 1e-5, 8, 0.5)


def test_only_salient_weights_move_and_the_mask_is_half_of_the_unet(clip_tokenizer):
    m = _method(clip_tokenizer, lr=1e-2)
    before = {n: p.detach().clone() for n, p in m.model.unet.named_parameters()}
    run_method(m, TrainerConfig(steps=3, progress=False))
    assert abs(m.mask_fraction - 0.5) < 0.01
    moved = kept = 0
    for n, p in m.model.unet.named_parameters():
        mask = m.masks[f"unet.{n}"]
        assert torch.equal(p[~mask], before[n][~mask]), n  # unmasked entries never move (plain Adam)
        moved += int((p[mask] != before[n][mask]).sum())
        kept += int(mask.sum())
    assert moved > 0.5 * kept
    assert all(p == "A Arrow image in Candy style." or "Candy" in p for p in m.forget_prompts)
    assert not any("Candy" in p for p in m.retain_prompts)


def test_remap_random_or_named(clip_tokenizer):
    m = _method(clip_tokenizer)
    m._pool = m._remap_pool()
    assert "Candy" not in m._pool and "Fire" in m._pool and len(m._pool) == 9
    out = {m._remap("A Fish image in Candy style.", torch.Generator().manual_seed(s)) for s in range(30)}
    assert len(out) > 3 and all(o.startswith("A Fish image in ") and "Candy" not in o for o in out)
    named = _method(clip_tokenizer, remap_to="Photo")
    named._pool = ["Photo"]
    assert named._remap("A Fish image in Candy style.", torch.Generator()) == "A Fish image in Photo style."
    with pytest.raises(MethodConfigError, match="retain_prompts"):
        _method(clip_tokenizer, concept="a red car", kind="object", remap_to="a blue car").setup(torch.Generator())


def test_remap_random_once_draws_one_other_concept_per_run_and_records_it(clip_tokenizer):
    picks = set()
    for seed in range(4):
        m = _method(clip_tokenizer, concept="Fish", kind="object", remap_to="random-once")
        m.setup(torch.Generator().manual_seed(seed))
        assert len(m._pool) == 1 and m._pool[0] != "Fish" and m.run_info()["remap_targets"] == m._pool
        assert {m._remap("A Fish image in Candy style.", torch.Generator().manual_seed(s)) for s in range(5)} == \
            {f"A {m._pool[0]} image in Candy style."}
        picks.add(m._pool[0])
    assert len(picks) > 1  # the draw follows the run's seed


def test_data_from_an_unlearncanvas_folder_and_from_an_imagefolder(clip_tokenizer, tmp_path):
    root = write_dataset(tmp_path / "mini", per_cell=1, size=16)
    m = _method(clip_tokenizer, concept="Fish", kind="object", data_dir=str(root))
    m.setup(torch.Generator().manual_seed(0))
    assert len(m.forget_prompts) == 4 and all("Fish" in p for p in m.forget_prompts)
    assert not any("Fish" in p for p in m.retain_prompts) and m.fm.shape == (4, 4, 8, 8)
    folder = tmp_path / "plain"
    folder.mkdir()
    rows = []
    for i, text in enumerate(["a Candy lollipop", "a tree", "candy stripes", "a boat"]):
        Image.fromarray(np.full((24, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(rows))
    m = _method(clip_tokenizer, data_dir=str(folder))
    m.setup(torch.Generator().manual_seed(0))
    assert sorted(m.forget_prompts) == ["a Candy lollipop", "candy stripes"]
    assert sorted(m.retain_prompts) == ["a boat", "a tree"]


def test_cli_saves_the_mask_with_the_artifact(tiny_sd_dir, tmp_path):
    out = tmp_path / "salun"
    assert main(["--method", "salun", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output", str(out),
                 "--steps", "2", "--quiet"] + [f"{k}={v}" for k, v in SMALL.items()]) == 0
    mask = read_extra(out, "salun_mask")
    meta = json.loads((out / "erase.json").read_text())
    assert meta["extra_files"] == ["salun_mask.safetensors"] and abs(meta["run"]["mask_fraction"] - 0.5) < 0.01
    assert len(mask) == meta["components"]["unet"]["tensors"] and mask[next(iter(mask))].dtype == torch.uint8
