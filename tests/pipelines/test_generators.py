"""Generators for feature unlearning: models, generator folders (save/load/errors), seeded latents, the sheet CLI."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines import generators as gens
from pipelines.generators import DCGAN, ConvVAE, GeneratorError, load_generator, save_generator, seeded_latents


def _config(kind: str, latent: int = 4, channels: int = 1, size: int = 16, width: int = 8) -> dict:
    return {"kind": kind, "dataset": "digits", "latent_dim": latent, "channels": channels, "image_size": size,
            "width": width}


@pytest.mark.parametrize("cls,size,channels", [(ConvVAE, 16, 1), (DCGAN, 32, 3), (ConvVAE, 8, 3)])
def test_sampler_maps_latents_to_images_in_unit_range(cls, size, channels):
    model = cls(4, channels, size, 8).eval()
    x = model.sampler()(torch.randn(5, 4))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= 0 and x.max() <= 1


def test_image_size_must_be_power_of_two():
    with pytest.raises(GeneratorError, match="power of two"):
        ConvVAE(4, 1, 24, 8)


def test_seeded_latents_depend_only_on_seed_and_index():
    a = seeded_latents(3, 10, 6)
    assert torch.equal(a[:4], seeded_latents(3, 4, 6))
    assert torch.equal(a[7:], seeded_latents(3, 3, 6, start=7))
    assert not torch.equal(a, seeded_latents(4, 10, 6))
    assert a.dtype == torch.float32 and a.shape == (10, 6)


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_save_load_round_trip_is_exact(tmp_path, kind):
    torch.manual_seed(0)
    model = gens.build_model(kind, 4, 1, 16, 8).eval()
    folder = save_generator(tmp_path / "g", model, _config(kind))
    assert sorted(p.name for p in folder.iterdir()) == ["generator.json", "model.safetensors"]
    assert not (tmp_path / "g.tmp").exists()
    art = load_generator(folder)
    z = seeded_latents(0, 6, 4)
    assert torch.equal(art.generate(z), gens.generate(model.sampler(), z))
    assert art.latent_dim == 4 and art.config["format"] == gens.FORMAT


def test_missing_generator_is_a_clear_error(tmp_path):
    with pytest.raises(GeneratorError, match="not found"):
        load_generator(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorError, match="no generator.json"):
        load_generator(tmp_path / "empty")


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path):
    folder = save_generator(tmp_path / "g", ConvVAE(4, 1, 16, 8), _config("vae"))
    cfg = json.loads((folder / "generator.json").read_text())
    cfg["latent_dim"] = 5
    (folder / "generator.json").write_text(json.dumps(cfg))
    with pytest.raises(GeneratorError, match="does not fit"):
        load_generator(folder)
    cfg["format"] = "something-else"
    (folder / "generator.json").write_text(json.dumps(cfg))
    with pytest.raises(GeneratorError, match="format"):
        load_generator(folder)


@pytest.mark.parametrize("name", ["digits-vae", "minicanvas-vae", "digits-gan"])
def test_shipped_generators_load(name):
    art = load_generator(name)
    x = art.generate(seeded_latents(0, 4, art.latent_dim))
    assert x.shape[1:] == (art.config["channels"], art.config["image_size"], art.config["image_size"])
    assert {"recipe", "data", "train_seconds", "hardware"} <= set(art.config)


def test_sample_cli_writes_contact_sheet_and_rejects_missing_model(tmp_path, capsys):
    folder = save_generator(tmp_path / "g", ConvVAE(4, 1, 16, 8), _config("vae"))
    assert gens.main(["sample", "--model", str(folder), "--count", "7", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100
    assert '"latent_dim": 4' in capsys.readouterr().out
    assert gens.main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not (tmp_path / "t.png").exists()
