"""Feature unlearning (Moon et al., AAAI 2024): direction, shift, SSIM, labels files, errors, end to end.

The end-to-end tests use a toy generator with an exactly known feature (a bright top row drawn
when z[0] is large; the "bangs" testbed of shared/reference/gan_vae.md section 6), so they need
no trained model and finish in seconds.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from erase.methods import feature_unlearning as fu
from erase.methods.base import build_config
from erase.methods.feature_unlearning import (Direction, FeatureUnlearningConfig, FeedbackError, fit_direction,
                                              read_labels, ssim, unlearn_feature)
from pipelines.generators import ConvVAE, GeneratorArtifact, save_generator, seeded_latents

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


# --------------------------------------------------------------------------- direction and shift
def test_shift_lands_on_threshold_along_the_direction():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=gen)
    d = fit_direction(z, z[:, 2] + 0.3 * z[:, 0] > 1.0)
    zh = d.shift(z)
    assert torch.allclose(d.project(zh), torch.full((400,), d.threshold), atol=1e-5)
    delta = zh - z
    assert torch.allclose(delta - (delta @ d.u)[:, None] * d.u, torch.zeros_like(z), atol=1e-5)
    raw = d.shift(z, "raw")  # the paper's unnormalised z_e over/undershoots by ||z_e||
    assert torch.allclose(d.project(raw) - d.threshold, (1 - d.norm) * (d.project(z) - d.threshold), atol=1e-4)


def test_thresholds_midpoint_and_pooled():
    z = torch.tensor([[3.0], [1.0], [0.0], [0.0], [-1.0], [1.0]])
    y = torch.tensor([True, True, False, False, False, False])
    assert fit_direction(z, y, "midpoint").threshold == pytest.approx((2.0 + 0.0) / 2)
    assert fit_direction(z, y, "pooled").threshold == pytest.approx(4.0 / 6)
    with pytest.raises(Exception, match="threshold"):
        fit_direction(z, y, "median")


def test_auc_matches_definition():
    s = torch.tensor([0.9, 0.8, 0.1, 0.8, 0.2])
    y = torch.tensor([True, True, False, False, False])
    assert fu.auc(s, y) == pytest.approx((3 + 2.5) / 6)


@pytest.mark.parametrize("labels", [[False] * 5, [True] * 5])
def test_direction_needs_positives_and_negatives(labels):
    with pytest.raises(FeedbackError, match="at least one of each"):
        fit_direction(torch.randn(5, 3), torch.tensor(labels))


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
def test_unlearning_from_hand_written_labels_removes_the_bar(tmp_path):
    art = toy_artifact()
    cfg = build_config(FeatureUnlearningConfig, {"steps": 250, "batch_size": 64, "lr": 3e-3})
    new, meta = unlearn_feature(art, "bar", labels=hand_written_labels(tmp_path), config=cfg)
    z = seeded_latents(99, 2000, LATENT)
    before, after = has_bar(art.generate(z)).float().mean(), has_bar(new.generate(z)).float().mean()
    assert before > 0.15 and after < 0.3 * before  # the feature is cut by more than 70 %
    d = meta["direction"]
    assert d["auc"] > 0.95 and abs(d["u"][0]) > 0.9  # the direction found is z[0]
    keep = ~Direction(torch.tensor(d["u"]), d["norm"], d["threshold"], 1, 1, 1, "midpoint").flagged(z)
    assert (new.generate(z[keep]) - art.generate(z[keep])).abs().mean() < 0.02  # unflagged latents kept
    assert torch.equal(art.model.bar.weight, BarGenerator().bar.weight)  # the base model is not modified
    assert 0.05 < meta["edited_fraction"] < 0.6 and meta["feedback"].startswith("labels file")


def test_method_contract_for_the_trainer(tmp_path):
    method = fu.FeatureUnlearning(build_config(FeatureUnlearningConfig, {"batch_size": 8}), "bar", "feature",
                                  toy_artifact())
    method.config.labels = hand_written_labels(tmp_path)
    method.setup(torch.Generator().manual_seed(0))
    params = method.trainable_parameters()
    assert set(params) == {f"generator.{m}.{p}" for m in ("body", "hinge", "bar") for p in ("weight", "bias")}
    loss = method.loss(0, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and loss.item() == 0.0 or loss.requires_grad  # g == f at step 0: recon term is 0
    assert set(method.changed_components()) == {"generator"}
    assert fu.FeatureUnlearning.name == "feature-unlearning"


def test_poorly_separable_feature_warns(tmp_path):
    art = toy_artifact()
    z = seeded_latents(0, 200, LATENT)
    path = tmp_path / "random.json"  # labels unrelated to the latent: no linear direction
    path.write_text(json.dumps({"seed": 0, "count": 200, "positive": list(range(0, 200, 7))}))
    method = fu.FeatureUnlearning(FeatureUnlearningConfig(labels=str(path)), "noise", "feature", art)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.setup(torch.Generator())
    assert any("not linearly editable" in str(w.message) for w in caught), z.shape


# --------------------------------------------------------------------------- command line
def _tiny_artifact(tmp_path):
    torch.manual_seed(0)
    return save_generator(tmp_path / "gen", ConvVAE(LATENT, 1, 8, 4),
                          {"kind": "vae", "dataset": "digits", "latent_dim": LATENT, "channels": 1,
                           "image_size": 8, "width": 4})


def test_cli_with_hand_written_labels_writes_an_artifact(tmp_path, capsys):
    gen = _tiny_artifact(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [0, 3, 5, 11]}')
    out = tmp_path / "out"
    rc = fu.main(["--model", str(gen), "--feature", "blob", "--labels", str(labels), "--out", str(out),
                  "--set", "steps=3", "--set", "batch_size=8"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "erase.json").read_text())
    assert meta["method"] == "feature-unlearning" and meta["config"]["steps"] == 3
    assert meta["base"]["sha256_16"] and meta["direction"]["positives"] == 4
    from pipelines.generators import load_generator
    assert load_generator(out).config["unlearned"]["feature"] == "blob"


@pytest.mark.parametrize("case", ["missing model", "no positives", "latent mismatch", "unknown option"])
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, case):
    gen = _tiny_artifact(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [1]}')
    extra = ["--set", "steps=2"]
    if case == "missing model":
        gen = tmp_path / "nope"
    elif case == "no positives":
        labels.write_text('{"seed": 0, "count": 20, "positive": []}')
    elif case == "latent mismatch":
        labels.write_text('{"seed": 0, "count": 20, "positive": [1], "latent_dim": 16}')
    else:
        extra = ["--set", "alhpa=2"]
    out = tmp_path / "out"
    rc = fu.main(["--model", str(gen), "--feature", "x", "--labels", str(labels), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and not out.exists() and not (tmp_path / "out.tmp").exists()


def test_cli_refuses_to_overwrite_an_existing_output(tmp_path, capsys):
    gen = _tiny_artifact(tmp_path)
    labels = tmp_path / "l.json"
    labels.write_text('{"seed": 0, "count": 20, "positive": [1]}')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    rc = fu.main(["--model", str(gen), "--feature", "x", "--labels", str(labels), "--out", str(tmp_path / "out")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
