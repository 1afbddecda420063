"""The memory model: batch choice from free memory (monotone, >= 1, explicit wins, CPU keeps defaults) and the
micro-batch split that keeps a method's update (tolerance: 1e-6 absolute on the weights after 3 SGD steps)."""

import json
from pathlib import Path

import pytest
import torch

from erase.concepts import resolve_concept
from erase.memory import (GIB, MAX_BATCH, SD15_PER_IMAGE, MemoryProfile, check_batch, free_device_bytes,
                          method_peak_bytes, per_image_bytes, plan_eval_batch, plan_method_batch, sd1_shaped)
from erase.methods.base import GradientMethod
from erase.trainer import TrainerConfig, train

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "memory_sd15.json"
SD1 = {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "in_channels": 4}
TINY = {"block_out_channels": [32, 64], "cross_attention_dim": 32, "in_channels": 4}
SALUN_LIKE = MemoryProfile("unet_train/full", 2, 1, 859_520_964, 859_520_964)


def test_the_constants_are_the_committed_measurement():
    data = json.loads(RESULTS.read_text())
    measured = {k: v["per_image_512_bytes"] for k, v in data["per_image"].items() if "per_image_512_bytes" in v}
    assert SD15_PER_IMAGE == {k: measured[k] for k in SD15_PER_IMAGE}
    assert data["library_constants"] == SD15_PER_IMAGE


def test_the_eval_batch_grows_with_free_memory_and_never_drops_below_one():
    batches = [plan_eval_batch(64, None, gib * GIB, SD1, 64).batch for gib in range(0, 120, 4)]
    assert batches == sorted(batches) and batches[0] == 1 and batches[-1] == 64
    starved = plan_eval_batch(64, None, 0, SD1, 64)
    assert starved.batch == 1 and "out-of-memory" in starved.reason


def test_the_method_micro_batch_divides_the_batch_and_grows_with_free_memory():
    plans = [plan_method_batch(SALUN_LIKE, 8, False, gib * GIB, SD1, 64, "bf16") for gib in range(0, 160, 8)]
    assert all(p.batch * p.grad_accum == 8 for p in plans)
    micro = [p.batch for p in plans]
    assert micro == sorted(micro) and micro[0] == 1 and micro[-1] == 8


def test_explicit_batch_wins_and_absurd_ones_are_refused():
    assert plan_eval_batch(64, 5, 0, SD1, 64).batch == 5
    assert plan_eval_batch(64, 200, 200 * GIB, SD1, 64).chosen_by == "explicit"
    plan = plan_method_batch(SALUN_LIKE, 8, True, 1 * GIB, SD1, 64)
    assert (plan.batch, plan.grad_accum, plan.chosen_by) == (8, 1, "explicit")
    for bad in (0, -3, MAX_BATCH + 1, True, 2.5):
        with pytest.raises(ValueError, match="between 1 and"):
            check_batch(bad)
    with pytest.raises(ValueError, match="--batch-size"):
        plan_eval_batch(64, 10**9, None, SD1, 64)


def test_the_cpu_and_other_models_keep_the_defaults():
    assert free_device_bytes("cpu") is None
    assert plan_eval_batch(64, None, None, SD1, 64).batch == 64
    assert plan_method_batch(SALUN_LIKE, 8, False, None, SD1, 64).batch == 8
    assert not sd1_shaped(TINY) and sd1_shaped(SD1)
    other = plan_eval_batch(64, None, 1 * GIB, TINY, 4)
    assert other.batch == 64 and "not SD-1.x-shaped" in other.reason


def test_per_image_bytes_scale_with_latent_area_and_halve_under_bf16():
    full = per_image_bytes("unet_infer", 64)
    assert per_image_bytes("unet_infer", 32) == pytest.approx(full / 4, abs=1)
    assert per_image_bytes("unet_infer", 64, "bf16") == pytest.approx(full / 2, abs=1)
    assert method_peak_bytes(SALUN_LIKE, 2, 64, "no") > method_peak_bytes(SALUN_LIKE, 1, 64, "no")


class Batched(GradientMethod):
    """Linear regression whose step takes one fixed batch of 8 rows, ``micro`` rows per (micro-)step."""

    name = "batched"

    def __init__(self, micro: int, accum: int):
        torch.manual_seed(0)
        super().__init__(type("C", (), {"lr": 0.1, "steps": 3})(), resolve_concept("x"), torch.nn.Linear(3, 1))
        self.micro, self.accum, self.calls = micro, accum, 0
        self.x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))

    def make_optimizer(self, params):
        return torch.optim.SGD(params, lr=0.1)  # unlike Adam's first step, SGD shows any scaling error

    def trainable_parameters(self):
        return {f"net.{n}": p for n, p in self.model.named_parameters()}

    def changed_components(self):
        return {"net": self.model}

    def loss(self, step, generator):
        m = self.calls % self.accum
        self.calls += 1
        rows = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:8][m * self.micro:(m + 1) * self.micro]
        x = self.x[rows]
        return (self.model(x) - x.sum(1, keepdim=True)).pow(2).mean()


def test_a_chosen_micro_batch_with_grad_accum_makes_the_full_batch_update():
    plan = plan_method_batch(SALUN_LIKE, 8, False, 12 * GIB, SD1, 64, "bf16")
    assert plan.grad_accum > 1  # the plan split the batch
    weights = {}
    for micro, accum in ((8, 1), (plan.batch, plan.grad_accum)):
        method = Batched(micro, accum)
        train(method, TrainerConfig(steps=3, grad_accum=accum, progress=False, checkpoint_every=0))
        weights[micro] = torch.cat([p.detach().flatten() for p in method.model.parameters()])
    assert torch.allclose(weights[8], weights[plan.batch], atol=1e-6)
