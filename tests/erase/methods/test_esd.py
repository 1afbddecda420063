
import pytest
import torch

from erase.concepts import resolve_concept
from erase.methods import MethodConfigError, get_method
from erase.methods.config import build_config
from erase.methods.esd import ESD, ESDConfig, select
from erase.sampling import partial_ddim
from erase.trainer import TrainerConfig, train
from tests.conftest import copy_pipe


@pytest.fixture
def make(tiny_pipe):
    """ESD on a fresh copy of the session's tiny pipeline."""
    def build(kind="style", **options):
        config = build_config(ESDConfig, {"ddim_steps": 4, **options})
        return ESD(config, resolve_concept("Candy", kind), copy_pipe(tiny_pipe))
    return build


def test_defaults_are_the_paper_setting_and_registry_finds_it():
    cfg = ESDConfig()
    assert (cfg.steps, cfg.lr, cfg.negative_guidance, cfg.start_guidance, cfg.ddim_steps, cfg.batch_size) == \
        (1000, 1e-5, 1.0, 3.0, 50, 1)
    assert get_method("ESD") is ESD
    with pytest.raises(MethodConfigError, match="unknown method"):
        get_method("esd2")


def test_parameter_sets_follow_the_compvis_train_methods(tiny_pipe):
    unet = tiny_pipe.unet
    names = [n for n, _ in unet.named_parameters()]
    x = [n for n in names if select("esd-x")(n)]
    u = [n for n in names if select("esd-u")(n)]
    assert x and all("attn2" in n for n in x)
    assert u and not any("attn2" in n or n.startswith(("time_embedding", "conv_out", "conv_norm_out")) for n in u)
    assert any("attn1" in n for n in u) and any(n.startswith("conv_in") for n in u)
    assert any("time_emb_proj" in n for n in u)  # resnet time projections stay trainable, as in noxattn
    assert set(x) | set(u) | {n for n in names if n.startswith(("time_embedding", "conv_out", "conv_norm_out"))} \
        == set(names)
    with pytest.raises(MethodConfigError):
        select("xattn")


def test_auto_variant_trains_only_cross_attention_for_a_style(make):
    m = make(lr=1e-2)
    before = {n: p.detach().clone() for n, p in m.model.unet.named_parameters()}
    train(m, TrainerConfig(steps=3, progress=False))
    assert m.variant == "esd-x" and m.run_info() == {"variant": "esd-x"}
    changed = {n for n, p in m.model.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("attn2" in n for n in changed)
    obj = make(kind="object")
    obj.setup(torch.Generator().manual_seed(0))
    assert obj.variant == "esd-u"


def test_target_is_negative_guidance_of_the_frozen_model(make):
    """At step 0 the trained and frozen UNets agree: pred - target = (1 + eta) (e(c) - e(∅))."""
    m = make(negative_guidance=2.0)
    m.setup(torch.Generator().manual_seed(0))
    loss = m.loss(0, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    torch.randint(0, 1, (1,), generator=gen)  # prompt index
    k = int(torch.randint(0, 4, (1,), generator=gen))
    z = torch.randn(1, 4, 8, 8, generator=gen)
    z = partial_ddim(m.frozen, z, m.cond[:1], m.uncond, m.timesteps, k, 3.0, m.alphas, m.alpha_final)
    t = m.timesteps[k].view(1)
    with torch.no_grad():
        diff = m.frozen(z, t, encoder_hidden_states=m.cond[:1]).sample - m.frozen(z, t, m.uncond).sample
    torch.testing.assert_close(loss, (3.0 * diff).pow(2).mean(), rtol=1e-4, atol=1e-7)


def test_faithful_offset_reproduces_the_compvis_mismatch(make):
    m = make(faithful_offset=True, ddim_steps=50)
    m.setup(torch.Generator().manual_seed(0))
    for seed in range(20):
        n, t = m._draw(torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        t_enc = int(torch.randint(0, 50, (1,), generator=gen))
        assert n == min(50, 51 - t_enc) and 20 * t_enc <= int(t) < 20 * t_enc + 20


@pytest.mark.parametrize("option,message", [("sample_with=both", "sample_with"), ("ddim_steps=0", "ddim_steps"),
                                            ("variant=xattn", "unknown ESD variant"), ("lr=-1", "lr must be positive"),
                                            ("steps=0", "steps must be at least 1")])
def test_out_of_range_options_are_refused_before_any_model_exists(option, message):
    key, value = option.split("=")
    with pytest.raises(MethodConfigError, match=message):
        ESD.validate(build_config(ESDConfig, {key: value}), resolve_concept("Candy"))
