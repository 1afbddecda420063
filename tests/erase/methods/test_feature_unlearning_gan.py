"""Feature unlearning on the shipped MiniCanvas GAN: artifact round trip, a hand-labelled run, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from erase.artifacts import read_record
from erase.cli import main
from erase.loading import load_erased_generator
from pipelines.generators import load_generator, save_generator, seeded_latents

GAN = "minicanvas-gan"


def test_shipped_gan_round_trips_strictly_with_the_same_samples(tmp_path):
    art = load_generator(GAN)
    assert art.config["kind"] == "gan" and art.config["image_size"] == 32 and art.config["minibatch_std"]
    again = load_generator(save_generator(tmp_path / "copy", art.model, art.config))
    z = seeded_latents(7, 16, art.latent_dim)
    # the same weights through the same ops in one process: identical images
    torch.testing.assert_close(again.generate(z), art.generate(z), rtol=0, atol=0)
    assert again.generate(z).shape == (16, 3, 32, 32)


def test_a_labels_file_run_on_the_gan_changes_only_the_generator(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"seed": 0, "count": 40, "positive": [1, 4, 9, 16, 25, 36], "latent_dim": 32}))
    out = tmp_path / "out"
    rc = main(["--method", "feature-unlearning", "--model", GAN, "--feature", "my marks", "--labels", str(labels),
               "--output", str(out), "--steps", "2", "batch_size=8", "margin=0.2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    record = read_record(out)
    assert list(record.components) == ["generator"] and record.config["margin"] == 0.2
    assert record.run["direction"]["positives"] == 6 and record.run["shift_ceiling_on_feedback"] is None
    erased, base = load_erased_generator(out), load_generator(GAN)
    z = seeded_latents(3, 8, 32)
    assert not torch.allclose(erased.generate(z), base.generate(z))
    for (name, a), b in zip(base.model.discriminator.state_dict().items(),
                            erased.model.discriminator.state_dict().values()):
        assert torch.equal(a, b), name  # the discriminator is the base's, untouched


@pytest.mark.parametrize("case", ["no positives", "latent mismatch", "margin out of range", "unknown option"])
def test_bad_input_on_the_gan_exits_2_with_one_line_and_no_output(tmp_path, capsys, case):
    spec = {"seed": 0, "count": 20, "positive": [1]}
    extra = ["--steps", "2"]
    if case == "no positives":
        spec["positive"] = []
    elif case == "latent mismatch":
        spec["latent_dim"] = 8
    elif case == "margin out of range":
        extra = ["margin=5"]
    else:
        extra = ["marjin=0.2"]
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps(spec))
    rc = main(["--method", "feature-unlearning", "--model", GAN, "--feature", "x", "--labels", str(labels),
               "--output", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.json"]
