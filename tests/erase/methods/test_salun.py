import json

import numpy as np
import pytest
import torch
from PIL import Image

from erase.artifacts import read_extra, read_record
from erase.cli import main
from erase.concepts import ConceptError, resolve_concept
from erase.data.minicanvas import write_dataset
from erase.methods import MethodConfigError
from erase.methods.config import build_config
from erase.methods.salun import SalUn, SalUnConfig
from erase.trainer import TrainerConfig, train
from tests.conftest import copy_pipe

SMALL = {"forget_images": 4, "retain_images": 4, "batch_size": 2, "gen_steps": 2, "vae_batch": 3}


@pytest.fixture
def make(tiny_pipe):
    """SalUn on a fresh copy of the session's tiny pipeline."""
    def build(concept="Candy", kind=None, **options):
        return SalUn(build_config(SalUnConfig, {**SMALL, **options}), resolve_concept(concept, kind),
                     copy_pipe(tiny_pipe))
    return build


def test_defaults_cite_the_paper_setting():
    cfg = SalUnConfig()
    assert (cfg.mask_keep, cfg.mask_guidance, cfg.lr, cfg.batch_size, cfg.alpha) == (0.5, 7.5, 1e-5, 8, 0.5)


def test_only_salient_weights_move_and_the_mask_is_half_of_the_unet(make):
    m = make(lr=1e-2)
    before = {n: p.detach().clone() for n, p in m.model.unet.named_parameters()}
    train(m, TrainerConfig(steps=3, progress=False))
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


def test_remap_random_or_named(make):
    m = make()
    m._pool = m._remap_pool()
    m.drawn = torch.zeros(len(m._pool), dtype=torch.bool)
    assert "Candy" not in m._pool and "Fire" in m._pool and len(m._pool) == 9
    out = {m._remap("A Fish image in Candy style.", torch.Generator().manual_seed(s)) for s in range(30)}
    assert len(out) > 3 and all(o.startswith("A Fish image in ") and "Candy" not in o for o in out)
    assert int(m.drawn.sum()) == len({o.split(" in ")[1] for o in out})  # run_info lists what was drawn
    named = make(remap_to="Photo")
    named._pool, named.drawn = ["Photo"], torch.zeros(1, dtype=torch.bool)
    assert named._remap("A Fish image in Candy style.", torch.Generator()) == "A Fish image in Photo style."
    with pytest.raises(ConceptError, match="retain_prompts"):
        make(concept="a red car", kind="object", remap_to="a blue car").setup(torch.Generator())


def test_remap_random_once_draws_one_other_concept_per_run_and_records_it(make):
    picks = set()
    for seed in range(4):
        m = make(concept="Fish", remap_to="random-once")
        m.setup(torch.Generator().manual_seed(seed))
        assert len(m._pool) == 1 and m._pool[0] != "Fish" and m.run_info()["remap_targets"] == []
        assert {m._remap("A Fish image in Candy style.", torch.Generator().manual_seed(s)) for s in range(5)} == \
            {f"A {m._pool[0]} image in Candy style."}
        assert m.run_info()["remap_targets"] == m._pool
        picks.add(m._pool[0])
    assert len(picks) > 1  # the draw follows the run's seed


def test_data_from_an_unlearncanvas_folder_and_from_an_imagefolder(make, tmp_path):
    root = write_dataset(tmp_path / "mini", per_cell=1, size=16)
    m = make(concept="Fish", data_dir=str(root))
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
    m = make(data_dir=str(folder))
    m.setup(torch.Generator().manual_seed(0))
    assert sorted(m.forget_prompts) == ["a Candy lollipop", "candy stripes"]
    assert sorted(m.retain_prompts) == ["a boat", "a tree"]


def test_vae_encodes_in_chunks_of_vae_batch(make):
    m = make()
    calls = []
    encode = m.model.vae.encode
    m.model.vae.encode = lambda x: calls.append(len(x)) or encode(x)  # counts calls on this copy only
    m.setup(torch.Generator().manual_seed(0))
    assert calls == [3, 1, 3, 1]  # 4 forget then 4 retain images, at most vae_batch=3 per call


def test_cli_saves_the_mask_with_the_artifact(tiny_sd_dir, tmp_path):
    out = tmp_path / "salun"
    # key=value options may sit anywhere on the line
    assert main(["--method", "salun", "forget_images=4", "--concept", "Candy", "--model", str(tiny_sd_dir),
                 "--output", str(out), "--steps", "2", "--quiet"] + [f"{k}={v}" for k, v in SMALL.items()]) == 0
    mask = read_extra(out, "salun_mask")
    record = read_record(out)
    assert record.extra_files == ["salun_mask.safetensors"] and abs(record.run["mask_fraction"] - 0.5) < 0.01
    assert len(mask) == record.components["unet"]["tensors"] and mask[next(iter(mask))].dtype == torch.uint8
    assert record.method_kind == "gradient" and record.train["steps"] == 2


@pytest.mark.parametrize("option", ["mask_keep=1.5", "mask_keep=0", "train_method=attn", "forget_images=0",
                                    "alpha=-1", "vae_batch=0"])
def test_out_of_range_options_are_refused_before_any_model_exists(option):
    key, value = option.split("=")
    with pytest.raises(MethodConfigError):
        SalUn.validate(build_config(SalUnConfig, {key: value}), resolve_concept("Candy"))
