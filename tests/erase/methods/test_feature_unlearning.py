"""Feature unlearning (Moon et al., AAAI 2024): SSIM, labels files, errors, end to end (the direction: test_latent_direction).

The end-to-end tests use a toy generator with an exactly known feature (a bright top row drawn
when z[0] is large; the "bangs" testbed of shared/reference/gan_vae.md section 6), so they need
no trained model and finish in seconds.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from erase.artifacts import read_record
from erase.cli import main
from erase.concepts import Concept
from erase.loading import load_erased_generator
from erase.methods import feature_unlearning as fu
from erase.methods.config import build_config
from erase.methods.feature_unlearning import FeatureUnlearningConfig, FeedbackError, read_labels, ssim
from erase.methods.latent_direction import Direction
from erase.trainer import TrainerConfig, train
from pipelines.generators import ConvVAE, GeneratorArtifact, load_generator, save_generator, seeded_latents

LATENT = 4


class BarGenerator(nn.Module):
    """z -> 1x8x8: a soft blob pattern from z[1:], plus a bright top row iff z[0] > 0.8."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(LATENT - 1, 56)
        # bar logit = 8 z0 - 6.4 (0 at z0 = 0.8), written with hinge units so that fine-tuning can bend it
        self.hinge = nn.Linear(1, 17)
        self.bar = nn.Linear(17, 8)
        with torch.no_grad():
            self.hinge.weight.fill_(1.0)
            self.hinge.bias.copy_(torch.cat([torch.tensor([10.0]), -torch.linspace(-2, 3, 16)]))
            self.bar.weight.zero_()
            self.bar.weight[:, 0] = 8.0
            self.bar.bias.fill_(-86.4)

    def forward(self, z):
        top = torch.sigmoid(self.bar(torch.relu(self.hinge(z[:, :1])))).view(-1, 1, 1, 8)
        rest = torch.sigmoid(self.body(z[:, 1:])).view(-1, 1, 7, 8) * 0.4
        return torch.cat([top, rest], dim=2)


def has_bar(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0].mean(-1) > 0.5


def toy_artifact() -> GeneratorArtifact:
    return GeneratorArtifact(BarGenerator().eval(), {"kind": "toy", "latent_dim": LATENT, "dataset": ""}, None)


def hand_written_labels(tmp_path, count: int = 300, seed: int = 0, **extra) -> str:
    """What a user writes after looking at a contact sheet: the indices that show the bar."""
    z = seeded_latents(seed, count, LATENT)
    positive = torch.nonzero(has_bar(BarGenerator()(z))).flatten().tolist()
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"seed": seed, "count": count, "positive": positive, **extra}))
    return str(path)


def test_ssim_is_one_for_equal_images_and_differentiable():
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    y = (x + 0.3 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    s = ssim(x, y, window=3)
    assert (s < 0.9).all()
    s.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


# --------------------------------------------------------------------------- labels files
def test_hand_written_labels_file_is_read(tmp_path):
    path = tmp_path / "l.json"
    path.write_text('{"seed": 2, "count": 6, "positive": [1, 4]}\n')
    z, y = read_labels(path, LATENT)
    assert y.tolist() == [False, True, False, False, True, False]
    assert torch.equal(z, seeded_latents(2, 6, LATENT))
    path.write_text('{"seed": 2, "count": 6, "positive": [1, 4], "negative": [0, 5]}')
    z, y = read_labels(path, LATENT)
    assert y.tolist() == [False, True, True, False] and torch.equal(z[1], seeded_latents(2, 6, LATENT)[1])


@pytest.mark.parametrize("content,match", [
    ('{"seed": 0, "count": 5, "positive": []}', "0 positive"),
    ('{"seed": 0, "count": 3, "positive": [0, 1, 2]}', "0 negative"),
    ('{"seed": 0, "count": 5, "positive": [1], "latent_dim": 9}', "latent size 9"),
    ('{"seed": 0, "count": 5, "positive": [7]}', "outside 0..4"),
    ('{"seed": 0, "count": 5, "positive": [1], "negative": [1, 2]}', "both positive and negative"),
    ('{"seed": 0, "count": 5, "positive": "1,2"}', "list of sample indices"),
    ('{"seed": 0, "positive": [1]}', "'count'"),
    ('{"seed": 0, "count": 5, "positive": [1]', "not valid JSON"),
])
def test_bad_labels_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "l.json"
    path.write_text(content)
    with pytest.raises(FeedbackError, match=match):
        read_labels(path, LATENT)


# --------------------------------------------------------------------------- end to end
def _feature(name: str) -> Concept:
    return Concept(name, name, "feature", name, None)


def _unlearn(art: GeneratorArtifact, labels: str, **options) -> fu.FeatureUnlearning:
    """The method trained on a copy of ``art`` through the shared trainer, as erase-concept runs it."""
    cfg = build_config(FeatureUnlearningConfig, {"labels": labels, **options})
    work = GeneratorArtifact(copy.deepcopy(art.model), dict(art.config), None)
    method = fu.FeatureUnlearning(cfg, _feature("bar"), work)
    train(method, TrainerConfig(steps=cfg.steps, progress=False))
    return method


def test_unlearning_from_hand_written_labels_removes_the_bar(tmp_path):
    art = toy_artifact()
    method = _unlearn(art, hand_written_labels(tmp_path), steps=250, batch_size=64, lr=3e-3)
    new, info = method.model, method.run_info()
    z = seeded_latents(99, 2000, LATENT)
    before, after = has_bar(art.generate(z)).float().mean(), has_bar(new.generate(z)).float().mean()
    assert before > 0.15 and after < 0.3 * before  # the feature is cut by more than 70 %
    d = info["direction"]
    assert d["auc"] > 0.95 and abs(d["u"][0]) > 0.9  # the direction found is z[0]
    keep = ~Direction(torch.tensor(d["u"]), d["norm"], d["threshold"], 1, 1, 1, "midpoint").flagged(z)
    assert (new.generate(z[keep]) - art.generate(z[keep])).abs().mean() < 0.02  # unflagged latents kept
    assert torch.equal(art.model.bar.weight, BarGenerator().bar.weight)  # the base model is not modified
    assert 0.05 < info["edited_fraction"] < 0.6 and info["feedback"].startswith("labels file")


def test_loss_is_zero_on_unflagged_latents_at_the_start_and_positive_on_flagged_ones(tmp_path):
    method = fu.FeatureUnlearning(build_config(FeatureUnlearningConfig, {"batch_size": 64,
                                                                         "labels": hand_written_labels(tmp_path)}),
                                  _feature("bar"), toy_artifact())
    method.setup(torch.Generator().manual_seed(0))
    params = method.trainable_parameters()
    assert set(params) == {f"generator.{m}.{p}" for m in ("body", "hinge", "bar") for p in ("weight", "bias")}
    loss = method.loss(0, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and loss.requires_grad and loss.item() > 0.01  # flagged latents are pulled to f(z_hat)
    method.direction.threshold = float("inf")  # nothing flagged: g == f at step 0, so every term is 0
    assert method.loss(0, torch.Generator().manual_seed(1)).item() == pytest.approx(0.0, abs=1e-7)
    assert set(method.changed_components()) == {"generator"}
    assert int(method.counts[1]) == 128 and 0 < int(method.counts[0]) < 64  # edited / seen latents so far


def test_poorly_separable_feature_warns(tmp_path):
    path = tmp_path / "random.json"  # labels unrelated to the latent: no linear direction
    path.write_text(json.dumps({"seed": 0, "count": 200, "positive": list(range(0, 200, 7))}))
    method = fu.FeatureUnlearning(FeatureUnlearningConfig(labels=str(path)), _feature("noise"), toy_artifact())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.setup(torch.Generator())
    assert any("not linearly editable" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- command line (erase-concept)
def _tiny_generator(tmp_path):
    torch.manual_seed(0)
    return save_generator(tmp_path / "gen", ConvVAE(LATENT, 1, 8, 4),
                          {"kind": "vae", "dataset": "", "latent_dim": LATENT, "channels": 1,
                           "image_size": 8, "width": 4})


def test_erase_concept_with_hand_written_labels_writes_a_loadable_artifact(tmp_path, capsys):
    gen = _tiny_generator(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [0, 3, 5, 11]}')
    out = tmp_path / "out"
    rc = main(["--method", "feature-unlearning", "--model", str(gen), "--feature", "blob", "--labels", str(labels),
               "--output", str(out), "--steps", "3", "batch_size=8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    record = read_record(out)
    assert (record.method, record.kind, record.config["steps"], record.base_model["type"]) == \
        ("feature-unlearning", "feature", 3, "generator")
    assert record.run["direction"]["positives"] == 4 and record.components["decoder"]["base_sha256"]
    erased, base = load_erased_generator(out), load_generator(gen)
    z = seeded_latents(5, 16, LATENT)
    assert not torch.allclose(erased.generate(z), base.generate(z))  # the decoder changed ...
    torch.testing.assert_close(erased.model.encoder(torch.zeros(1, 1, 8, 8)),  # ... and only the decoder
                               base.model.encoder(torch.zeros(1, 1, 8, 8)), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["missing model", "no positives", "latent mismatch", "unknown option",
                                  "bad threshold"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, case):
    gen = _tiny_generator(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [1]}')
    extra = ["--steps", "2"]
    if case == "missing model":
        gen = tmp_path / "nope"
    elif case == "no positives":
        labels.write_text('{"seed": 0, "count": 20, "positive": []}')
    elif case == "latent mismatch":
        labels.write_text('{"seed": 0, "count": 20, "positive": [1], "latent_dim": 16}')
    elif case == "unknown option":
        extra = ["alhpa=2"]
    else:
        extra = ["threshold=median"]
    out = tmp_path / "out"
    rc = main(["--method", "feature-unlearning", "--model", str(gen), "--feature", "x", "--labels", str(labels),
               "--output", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "l.json"]  # nothing written, no work folder


def test_refuses_to_overwrite_an_existing_output(tmp_path, capsys):
    gen = _tiny_generator(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [1]}')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    rc = main(["--method", "feature-unlearning", "--model", str(gen), "--feature", "x", "--labels", str(labels),
               "--output", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
