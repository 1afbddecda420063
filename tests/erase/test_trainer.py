"""The training loop: resume bit-identical, refusal of foreign checkpoints, NaN stop, precision, hooks."""


import pytest
import torch

from erase.concepts import resolve_concept
from erase.methods.base import GradientMethod
from erase.methods.config import build_config
from erase.methods.esd import ESD, ESDConfig
from erase.trainer import (MAX_SEED, NonFiniteLossError, TrainerConfig, TrainingError, autocast_precision,
                           make_accelerator, step_generator, train)
from tests.conftest import copy_pipe


@pytest.fixture
def esd(tiny_pipe):
    def build():
        cfg = build_config(ESDConfig, {"steps": 6, "lr": 1e-3, "ddim_steps": 4, "variant": "esd-x"})
        return ESD(cfg, resolve_concept("Candy"), copy_pipe(tiny_pipe))
    return build


def _weights(method):
    return {n: p.detach().clone() for n, p in method.trainable_parameters().items()}


class Regression(GradientMethod):
    """A linear model learning y = sum(x): any module trains through the same loop."""

    name = "regression"

    def __init__(self, lr: float = 0.1, poison_step: int | None = None):
        super().__init__(type("C", (), {"lr": lr, "steps": 1})(), resolve_concept("x"), torch.nn.Linear(3, 1))
        self.poison_step = poison_step

    def trainable_parameters(self):
        return {f"net.{n}": p for n, p in self.model.named_parameters()}

    def changed_components(self):
        return {"net": self.model}

    def loss(self, step, generator):
        x = torch.randn(32, 3, generator=generator)
        loss = (self.model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        return loss * float("nan") if step == self.poison_step else loss


def test_killed_and_resumed_run_ends_with_identical_weights(esd, tmp_path):
    cfg = TrainerConfig(steps=6, seed=3, checkpoint_every=2, progress=False)
    straight = esd()
    train(straight, cfg, tmp_path / "a")

    killed = esd()
    real_loss = killed.loss

    def dying_loss(step, gen):
        if step == 3:
            raise KeyboardInterrupt  # the process dies after the step-2 checkpoint, mid-step 3
        return real_loss(step, gen)

    killed.loss = dying_loss
    with pytest.raises(KeyboardInterrupt):
        train(killed, cfg, tmp_path / "b")
    resumed = esd()
    result = train(resumed, cfg, tmp_path / "b", resume=True)
    assert result.resumed_from == 2 and result.kind == "gradient" and len(result.losses) == 6
    a, b = _weights(straight), _weights(resumed)
    # bit-identical on purpose: the same run on the same machine, resumed from its own checkpoint
    assert all(torch.equal(a[n], b[n]) for n in a)
    fresh = esd()
    fresh.setup(torch.Generator().manual_seed(0))
    base = _weights(fresh)
    assert any(not torch.equal(a[n], base[n]) for n in a)  # training did move the weights


def test_checkpoint_of_another_run_or_without_resume_is_refused(esd, tmp_path):
    cfg = TrainerConfig(steps=3, checkpoint_every=1, progress=False)
    m = esd()
    m.loss = lambda step, gen, f=m.loss: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2 else f(step, gen)
    with pytest.raises(KeyboardInterrupt):
        train(m, cfg, tmp_path, fingerprint={"concept": "Candy"})
    with pytest.raises(TrainingError, match="--resume"):
        train(esd(), cfg, tmp_path, fingerprint={"concept": "Candy"})
    with pytest.raises(TrainingError, match="different run"):
        train(esd(), cfg, tmp_path, resume=True, fingerprint={"concept": "Fire"})


def test_any_module_trains_and_nan_stops_before_touching_weights():
    torch.manual_seed(0)
    res = train(Regression(), TrainerConfig(steps=60, grad_accum=2, progress=False))
    assert res.losses[-1] < 0.1 * res.losses[0] and res.seconds > 0 and res.peak_memory_bytes > 0
    poisoned = Regression(poison_step=0)
    before = {n: p.detach().clone() for n, p in poisoned.trainable_parameters().items()}
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 0"):
        train(poisoned, TrainerConfig(steps=3, progress=False))
    assert all(torch.equal(before[n], p) for n, p in poisoned.trainable_parameters().items())


def test_bf16_mixed_precision_runs_in_the_same_process():
    for precision in ("bf16", "no"):
        torch.manual_seed(0)
        res = train(Regression(), TrainerConfig(steps=40, mixed_precision=precision, progress=False))
        assert res.losses[-1] < 0.2 * res.losses[0]
    with pytest.raises(TrainingError, match="mixed_precision"):
        train(Regression(), TrainerConfig(mixed_precision="fp8"))


@pytest.mark.parametrize("requested,ran", [("no", "no"), ("fp16", "no"), ("bf16", "bf16")])
def test_the_precision_that_runs_on_a_cpu_is_read_from_autocast(requested, ran):
    """accelerate takes fp16 on a CPU but autocasts nothing: such a run is float32 and must say so."""
    accelerator = make_accelerator(TrainerConfig(mixed_precision=requested, cpu=True))
    assert autocast_precision(accelerator) == ran


def test_after_setup_runs_before_the_first_change():
    method = Regression()
    seen = []
    train(method, TrainerConfig(steps=2, progress=False),
          after_setup=lambda: seen.append(method.model.weight.detach().clone()))
    assert len(seen) == 1 and not torch.equal(seen[0], method.model.weight)


def test_step_generators_differ_across_seeds_steps_and_processes():
    """Every coordinate reaches the 32 bits mt19937 keeps; seed 1 does not replay seed 0 at a later step."""
    seeds = (0, 1, 2, 2**31 - 1, 2**32, 10**8, MAX_SEED)
    coords = [(s, step, 0, 0) for s in seeds for step in range(0, 1000, 37)] + [(0, 0, 1, 0), (0, 0, 0, 1)]
    draws = {float(torch.rand(1, generator=step_generator(*c))) for c in coords}
    assert len(draws) == len(coords)
    assert torch.equal(torch.rand(4, generator=step_generator(3, 7)), torch.rand(4, generator=step_generator(3, 7)))
