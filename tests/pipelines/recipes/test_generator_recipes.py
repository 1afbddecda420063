"""Recipes of the shipped generators: a tiny run trains, saves and reloads, resumes after a kill; exact BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch

from pipelines.generators import DCGAN, GeneratorError, latent_classes, load_generator, seeded_latents
from pipelines.recipes import generators as recipes
from pipelines.recipes.generators import Recipe, recalibrate_batchnorm, train_generator


def test_tiny_recipe_trains_and_saves(tmp_path):
    for kind in ("vae", "gan"):
        art = train_generator(Recipe(kind, "digits", latent_dim=4, width=8, steps=3, batch=8), tmp_path / kind,
                              log_every=0)
        again = load_generator(tmp_path / kind)
        assert again.config["recipe"]["steps"] == 3 and again.config["data"]["images"] > 1000
        z = seeded_latents(1, 4, 4)
        assert torch.allclose(art.generate(z), again.generate(z))


def test_batchnorm_recalibration_sets_exact_statistics():
    model = DCGAN(4, 1, 16, 8)
    recalibrate_batchnorm(model.generator, 4, torch.Generator().manual_seed(0), batches=3, batch=32)
    bn = model.generator.fc_norm
    assert not model.generator.training and bn.momentum == 0.1
    assert bn.num_batches_tracked.item() == 3 and bn.running_var.mean() != 1


def test_sn_hinge_gan_saves_and_loads_strictly(tmp_path):
    recipe = Recipe("gan", "digits", latent_dim=4, width=8, steps=3, batch=8, loss="hinge", spectral_norm=True)
    art = train_generator(recipe, tmp_path / "gan", log_every=0)
    again = load_generator(tmp_path / "gan")
    assert again.config["spectral_norm"] is True
    assert any("parametrizations" in k for k in again.model.state_dict())  # the discriminator's SN state is kept
    z = seeded_latents(2, 4, 4)
    assert torch.allclose(art.generate(z), again.generate(z))


def test_killed_recipe_resumes_to_the_same_weights(tmp_path, monkeypatch):
    recipe = lambda steps=6: Recipe("gan", "digits", latent_dim=4, width=8, steps=steps, batch=8,  # noqa: E731
                                    loss="hinge", spectral_norm=True, checkpoint_every=2)
    whole = train_generator(recipe(), log_every=0, work=tmp_path / "whole")
    calls, real_step = [0], recipes._step

    def killed_after_three_steps(optimizer, loss):
        calls[0] += 1
        if calls[0] > 3 * 2:  # two optimizer steps (D, G) per training step
            raise KeyboardInterrupt
        real_step(optimizer, loss)

    monkeypatch.setattr(recipes, "_step", killed_after_three_steps)
    with pytest.raises(KeyboardInterrupt):
        train_generator(recipe(), log_every=0, work=tmp_path / "resumed")
    monkeypatch.setattr(recipes, "_step", real_step)
    resumed = train_generator(recipe(), log_every=0, work=tmp_path / "resumed")  # from the step-2 checkpoint
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # the same process and ops: a resumed run is bit-identical
    longer = train_generator(recipe(8), log_every=0, work=tmp_path / "resumed")  # a GAN's training extends
    for a, b in zip(train_generator(recipe(8), log_every=0).model.state_dict().values(),
                    longer.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(GeneratorError, match="another recipe"):
        train_generator(Recipe("gan", "digits", latent_dim=4, width=8, steps=9, batch=8), work=tmp_path / "resumed")


def test_latent_class_gan_asks_each_latent_for_the_class_of_its_leading_coordinate(tmp_path):
    z = torch.tensor([[0.1, 2.0, -1.0, 0.5, 3.0, 0.0], [1.5, 0.2, 0.3, -2.0, -1.0, -3.0]])
    style, obj = latent_classes(z, [3, 2])  # style: coordinates 0-2, object: 3-4, coordinate 5 free
    assert style.tolist() == [1, 0] and obj.tolist() == [1, 1]
    recipe = Recipe("gan", "digits", latent_dim=12, width=8, steps=3, batch=8, loss="hinge", latent_classes=True)
    art = train_generator(recipe, tmp_path / "acgan", log_every=0)
    again = load_generator(tmp_path / "acgan")
    assert art.config["aux_classes"] == again.config["aux_classes"] == [10]  # one head: the digit
    assert again.model.discriminator.fc.out_features == 1 + 10
    z = seeded_latents(3, 4, 12)
    assert torch.allclose(art.generate(z), again.generate(z), atol=1e-6)  # same weights, reloaded: float noise only
    with pytest.raises(GeneratorError, match="latent coordinates"):
        DCGAN(8, 1, 16, 8, aux_classes=[10])


def test_class_inputs_give_the_generator_the_one_hot_of_its_latent_s_classes(tmp_path):
    model = DCGAN(12, 1, 16, 8, aux_classes=[3, 2], class_inputs=True).eval()
    g = model.generator
    assert g.fc.in_features == 12 + 3 + 2
    z = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    style, obj = latent_classes(z, [3, 2])
    codes = torch.cat([z, torch.nn.functional.one_hot(style, 3).float(), torch.nn.functional.one_hot(obj, 2).float()], 1)
    def from_input(v: torch.Tensor) -> torch.Tensor:  # the generator's layers after its input is assembled
        return torch.sigmoid(g.up(torch.relu(g.fc_norm(g.fc(v))).view(len(v), g.first, 4, 4)))

    with torch.no_grad():
        # the same layers on the same input in one process; a tolerance only for kernels that batch differently
        torch.testing.assert_close(g(z), from_input(codes), rtol=1e-5, atol=1e-6)
        swapped = z.clone()
        swapped[:, [0, 1, 2]] = z[:, [1, 2, 0]]  # every latent names another style, its values otherwise kept
        stale_code = torch.cat([swapped, codes[:, 12:]], 1)  # the raw coordinates move, the code does not
        assert not torch.allclose(g(swapped), from_input(stale_code), atol=1e-4)
    recipe = Recipe("gan", "digits", latent_dim=12, width=8, steps=3, batch=8, loss="hinge", latent_classes=True,
                    class_inputs=True)
    art = train_generator(recipe, tmp_path / "coded", log_every=0)
    again = load_generator(tmp_path / "coded")
    assert again.config["class_inputs"] is True and again.model.generator.fc.in_features == 12 + 10
    z = seeded_latents(3, 4, 12)
    assert torch.allclose(art.generate(z), again.generate(z), atol=1e-6)  # same weights, reloaded: float noise only
    config = tmp_path / "coded" / "generator.json"
    config.write_text(config.read_text().replace('"class_inputs": true', '"class_inputs": false'))
    with pytest.raises(GeneratorError, match="does not fit"):
        load_generator(tmp_path / "coded")  # weights that read a code do not load into a generator without one
    with pytest.raises(GeneratorError, match="needs aux_classes"):
        DCGAN(12, 1, 16, 8, class_inputs=True)  # no classes named: refused, not a plain generator in silence


def test_the_class_terms_reach_both_losses_with_their_weight():
    torch.manual_seed(0)
    model = DCGAN(12, 1, 16, 8, spectral_norm=True, aux_classes=[3, 2]).eval()  # eval: no power-iteration update
    real, z = torch.rand(6, 1, 16, 16), torch.randn(6, 12)
    real_labels = [torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 0, 1])]
    latent_labels = latent_classes(z, [3, 2])
    with torch.no_grad():
        heads = lambda x: model.discriminator(x * 2 - 1)[:, 1:].split([3, 2], dim=1)  # noqa: E731
        expected_d = sum(torch.nn.functional.cross_entropy(h, y) for h, y in zip(heads(real), real_labels))
        expected_g = sum(torch.nn.functional.cross_entropy(h, y) for h, y in zip(heads(model.generator(z)),
                                                                                 latent_labels))
    for loss in recipes.LOSSES:
        plain_d, plain_g = recipes._gan_losses(model.generator, model.discriminator, real, z, loss)
        aux_d, aux_g = recipes._gan_losses(model.generator, model.discriminator, real, z, loss,
                                           (real_labels, latent_labels, [3, 2], 0.5))
        # the same forward passes, summed in another order: float32 rounding only
        torch.testing.assert_close(aux_d - plain_d, 0.5 * expected_d, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(aux_g() - plain_g(), 0.5 * expected_g, rtol=1e-4, atol=1e-5)
