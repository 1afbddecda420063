import pytest
import torch
from diffusers import StableDiffusionPipeline

from conftest import tiny_sd_components
from erase.methods.base import build_config
from erase.methods.esd import ESD, ESDConfig
from erase.trainer import NonFiniteLossError, TrainerConfig, TrainingError, run_method, train


def _esd(tokenizer):
    pipe = StableDiffusionPipeline(**tiny_sd_components(tokenizer))
    cfg = build_config(ESDConfig, {"steps": 6, "lr": 1e-3, "ddim_steps": 4, "variant": "esd-x"})
    return ESD(cfg, "Candy", "style", pipe)


def _weights(method):
    return {n: p.detach().clone() for n, p in method.trainable_parameters().items()}


def test_killed_and_resumed_run_ends_with_identical_weights(clip_tokenizer, tmp_path):
    cfg = TrainerConfig(steps=6, seed=3, checkpoint_every=2, progress=False)
    straight = _esd(clip_tokenizer)
    run_method(straight, cfg, tmp_path / "a")

    killed = _esd(clip_tokenizer)
    real_loss = killed.loss

    def dying_loss(step, gen):
        if step == 3:
            raise KeyboardInterrupt  # the process dies after the step-2 checkpoint, mid-step 3
        return real_loss(step, gen)

    killed.loss = dying_loss
    with pytest.raises(KeyboardInterrupt):
        run_method(killed, cfg, tmp_path / "b")
    resumed = _esd(clip_tokenizer)
    result = run_method(resumed, cfg, tmp_path / "b", resume=True)
    assert result.resumed_from == 2
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    fresh = _esd(clip_tokenizer)
    fresh.setup(torch.Generator().manual_seed(0))
    base = _weights(fresh)
    assert any(not torch.equal(a[n], base[n]) for n in a)  # training did move the weights


def test_checkpoint_of_another_run_or_without_resume_is_refused(clip_tokenizer, tmp_path):
    cfg = TrainerConfig(steps=3, checkpoint_every=1, progress=False)
    m = _esd(clip_tokenizer)
    m.loss = lambda step, gen, f=m.loss: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2 else f(step, gen)
    with pytest.raises(KeyboardInterrupt):
        run_method(m, cfg, tmp_path, fingerprint={"concept": "Candy"})
    with pytest.raises(TrainingError, match="--resume"):
        run_method(_esd(clip_tokenizer), cfg, tmp_path, fingerprint={"concept": "Candy"})
    with pytest.raises(TrainingError, match="different run"):
        run_method(_esd(clip_tokenizer), cfg, tmp_path, resume=True, fingerprint={"concept": "Fire"})


def test_any_module_trains_and_nan_stops_before_touching_weights():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    params = dict(net.named_parameters())

    def loss(step, gen):
        x = torch.randn(32, 3, generator=gen)
        return (net(x) - x.sum(1, keepdim=True)).pow(2).mean()

    res = train(params, loss, torch.optim.Adam(net.parameters(), lr=0.1),
                TrainerConfig(steps=60, grad_accum=2, progress=False))
    assert res.losses[-1] < 0.1 * res.losses[0] and res.seconds > 0 and res.peak_memory_bytes > 0
    before = {n: p.detach().clone() for n, p in params.items()}

    def bad(step, gen):
        return loss(step, gen) * (float("nan") if step == 0 else 1.0)

    with pytest.raises(NonFiniteLossError, match="loss became nan at step 0"):
        train(params, bad, torch.optim.Adam(net.parameters(), lr=0.1), TrainerConfig(steps=3, progress=False))
    assert all(torch.equal(before[n], p) for n, p in params.items())


def test_bf16_mixed_precision_runs_in_the_same_process():
    for precision in ("bf16", "no"):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)

        def loss(step, gen):
            x = torch.randn(16, 3, generator=gen)
            return (net(x) - x.sum(1, keepdim=True)).pow(2).mean()

        res = train(dict(net.named_parameters()), loss, torch.optim.Adam(net.parameters(), lr=0.1),
                    TrainerConfig(steps=40, mixed_precision=precision, progress=False))
        assert res.losses[-1] < 0.2 * res.losses[0]
    with pytest.raises(TrainingError, match="mixed_precision"):
        train({}, loss, torch.optim.Adam(net.parameters()), TrainerConfig(mixed_precision="fp8"))
