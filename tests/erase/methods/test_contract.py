"""Worked examples of the three method kinds, each run through the one ``erase-concept`` path.

Adding a method is one file (a class like those below), one registry line (``METHODS[name] = cls``
in ``erase/methods/__init__.py``; here ``monkeypatch.setitem``) and, for the embedded world, one
preset file. Each example is small enough to read in a minute and checks what its kind promises:

* gradient (``GradientMethod``): a loss per step; the trainer steps the optimizer;
* step (``SteppingMethod``): an inner adversarial loop with its own optimizer and state carried
  between steps; inner gradients never reach the trained weights; kill + resume is bit-identical;
* closed-form (``ClosedFormMethod``): one edit of the cross-attention value projections, no optimizer,
  and ``erase.json`` says that no training happened.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from erase.artifacts import read_record
from erase.cli import InputError, erase_concept
from erase.concepts import resolve_concept
from erase.loading import load_erased_pipeline
from erase.methods import METHODS
from erase.methods.base import ClosedFormMethod, GradientMethod, SteppingMethod, named_trainable
from erase.methods.config import build_config, option
from erase.sampling import encode_prompts
from erase.trainer import TrainerConfig, train
from tests.conftest import copy_pipe


# --------------------------------------------------------------------------- (a) gradient
@dataclass
class QuietKeysConfig:
    steps: int = option(5, "optimizer steps")
    lr: float = option(1e-2, "Adam learning rate")


class QuietKeys(GradientMethod):
    """Shrink the cross-attention keys of the concept's tokens: the loss is ||to_k(c)||^2."""

    name = "quiet-keys"
    Config = QuietKeysConfig

    def setup(self, generator):
        pipe = self.model
        self.params = named_trainable("unet", pipe.unet, lambda n: "attn2.to_k" in n)
        self.cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [self.concept.phrase])
        self.keys = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_k")]

    def trainable_parameters(self):
        return self.params

    def changed_components(self):
        return {"unet": self.model.unet}

    def loss(self, step, generator):
        return sum(k(self.cond).pow(2).mean() for k in self.keys)


# --------------------------------------------------------------------------- (b) owns its step
@dataclass
class RobustConfig:
    steps: int = option(4, "outer optimizer steps")
    lr: float = option(1e-3, "outer Adam learning rate")
    inner_steps: int = option(2, "attack steps per outer step")
    inner_lr: float = option(0.1, "attack Adam learning rate")


class Robust(SteppingMethod):
    """Erase against an attacker: an additive embedding delta (warm-started from the last step's) first
    maximises the erasure loss, then the cross-attention weights minimise it under that delta."""

    name = "robust"
    Config = RobustConfig

    def setup(self, generator):
        pipe = self.model
        self.unet, self.frozen = pipe.unet, copy.deepcopy(pipe.unet).requires_grad_(False)
        self.params = named_trainable("unet", self.unet, lambda n: "attn2" in n)
        self.cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [self.concept.phrase])
        self.uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
        self.delta = torch.zeros_like(self.cond)  # the attacker's state, carried between steps

    def trainable_parameters(self):
        return self.params

    def changed_components(self):
        return {"unet": self.unet}

    def state_tensors(self):
        return {"delta": self.delta}

    def load_state_tensors(self, tensors):
        self.delta = tensors["delta"].clone()

    def _erasure_loss(self, z, t, delta):
        target = self.frozen(z, t, encoder_hidden_states=self.uncond).sample
        return F.mse_loss(self.unet(z, t, encoder_hidden_states=self.cond + delta).sample, target)

    def attack(self, z, t):
        """Inner loop: gradients go to delta only (``autograd.grad``), never into the weights' ``.grad``."""
        delta = self.delta.clone().requires_grad_(True)
        inner = torch.optim.Adam([delta], lr=self.config.inner_lr)
        for _ in range(self.config.inner_steps):
            (grad,) = torch.autograd.grad(-self._erasure_loss(z, t, delta), delta)
            delta.grad = grad
            inner.step()
        self.delta = delta.detach()

    def training_step(self, ctx):
        gen = ctx.generator()
        z = torch.randn(1, 4, 8, 8, generator=gen)
        t = torch.randint(0, 1000, (1,), generator=gen)
        self.attack(z, t)
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = self._erasure_loss(z, t, self.delta)
        ctx.backward(loss)
        ctx.optimizer.step()
        return float(loss.detach())


# --------------------------------------------------------------------------- (c) closed form
@dataclass
class ProjectOutConfig:
    layers: str = option("attn2.to_v", "which linear maps to edit (name suffix)")


class ProjectOut(ClosedFormMethod):
    """W <- W (I - c c^T / c^T c) on every cross-attention value map: the concept's pooled embedding c
    then carries no value, while directions orthogonal to c keep theirs (a UCE-style edit, in one shot)."""

    name = "project-out"
    Config = ProjectOutConfig

    def setup(self, generator):
        pipe = self.model
        emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, [self.concept.phrase])[0]
        self.c = emb.mean(0)
        self.maps = [m for n, m in pipe.unet.named_modules() if n.endswith(self.config.layers)]

    def changed_components(self):
        return {"unet": self.model.unet}

    @torch.no_grad()
    def apply(self, generator):
        c = self.c / self.c.norm()
        for m in self.maps:
            m.weight -= (m.weight @ c)[:, None] * c[None, :]

    def run_info(self):
        return {"edited_maps": len(self.maps)}


# --------------------------------------------------------------------------- the tests
@pytest.fixture
def registered(monkeypatch):
    for cls in (QuietKeys, Robust, ProjectOut):
        monkeypatch.setitem(METHODS, cls.name, cls)


def _erase(name, tiny_sd_dir, out, **kw):
    return erase_concept(name, "Candy", model=str(tiny_sd_dir), output=out, progress=False, **kw)


def test_gradient_kind_through_erase_concept(registered, tiny_sd_dir, tiny_pipe, tmp_path):
    out, record = _erase("quiet-keys", tiny_sd_dir, tmp_path / "a")
    assert (record.method_kind, record.train["kind"], record.train["steps"]) == ("gradient", "gradient", 5)
    assert record.train["last_losses"][-1] < record.train["first_losses"][0]
    assert record.components["unet"]["format"] == "partial"  # only the keys trained: a small artifact
    erased = load_erased_pipeline(out)
    changed = {n for n, p in erased.unet.named_parameters()
               if not torch.equal(p, dict(tiny_pipe.unet.named_parameters())[n])}
    assert changed and all("attn2.to_k" in n for n in changed)


def test_step_kind_keeps_inner_gradients_out_and_resumes_bit_identical(registered, tiny_pipe, tmp_path):
    def method():
        return Robust(build_config(RobustConfig, {}), resolve_concept("Candy"), copy_pipe(tiny_pipe))

    probe = method()
    probe.setup(torch.Generator())
    probe.attack(torch.randn(1, 4, 8, 8), torch.tensor([500]))
    assert all(p.grad is None for p in probe.params.values())  # the attack left no gradient on the weights
    assert probe.delta.abs().sum() > 0  # ... and did move its own variable

    cfg = TrainerConfig(steps=4, seed=1, checkpoint_every=2, progress=False)
    straight = method()
    train(straight, cfg, tmp_path / "a")
    killed = method()
    step = killed.training_step
    killed.training_step = lambda ctx: (_ for _ in ()).throw(KeyboardInterrupt) if ctx.step == 3 else step(ctx)
    with pytest.raises(KeyboardInterrupt):
        train(killed, cfg, tmp_path / "b")
    resumed = method()
    assert train(resumed, cfg, tmp_path / "b", resume=True).resumed_from == 2
    # bit-identical on purpose: the same run resumed on the same machine, the attacker's delta included
    assert torch.equal(straight.delta, resumed.delta)
    assert all(torch.equal(p, resumed.params[n]) for n, p in straight.params.items())


def test_step_kind_through_erase_concept(registered, tiny_sd_dir, tmp_path):
    out, record = _erase("robust", tiny_sd_dir, tmp_path / "b")
    assert (record.method_kind, record.train["steps"], len(record.train["first_losses"])) == ("step", 4, 4)
    assert record.trainer["checkpoint_every"] == 50 and read_record(out).method == "robust"


def test_closed_form_kind_edits_once_and_says_no_training_happened(registered, tiny_sd_dir, tiny_pipe, tmp_path):
    out, record = _erase("project-out", tiny_sd_dir, tmp_path / "c")
    assert record.method_kind == "closed-form" and record.trainer is None
    assert record.train == {"kind": "closed-form", "steps": 0, "final_loss": None, "resumed_from": 0,
                            "first_losses": [], "last_losses": []}
    assert record.run == {"edited_maps": 4}  # down, mid and two up cross-attentions and record.cost["seconds"] >= 0
    erased = load_erased_pipeline(out)
    c = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["Candy"])[0].mean(0)
    other = torch.randn(c.shape, generator=torch.Generator().manual_seed(0))
    other = other - (other @ c) / (c @ c) * c  # orthogonal to c
    for name, m in erased.unet.named_modules():
        if name.endswith("attn2.to_v"):
            base = dict(tiny_pipe.unet.named_modules())[name]
            # float32 edit of unit-scale weights: 1e-5 absolute is far below any trained change
            torch.testing.assert_close(m(c), torch.zeros_like(m(c)), rtol=0, atol=1e-5)
            torch.testing.assert_close(m(other), base(other), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="closed-form"):
        _erase("project-out", tiny_sd_dir, tmp_path / "d", steps=3)
