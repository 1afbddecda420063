import torch
from diffusers import DDIMScheduler

import pytest

from erase.sampling import add_noise, ddim_step, ddim_timesteps, final_alpha, prediction_type, training_target

SD_V1 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def test_ddim_timesteps_match_the_compvis_list():
    ts = ddim_timesteps(SD_V1, 50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50 and (ts[:-1] - ts[1:] == 20).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers_scheduler(kind):
    config = {**SD_V1, "prediction_type": kind}
    sched = DDIMScheduler(**config)
    sched.set_timesteps(10)
    ts = ddim_timesteps(config, 10)
    gen = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    ac = sched.alphas_cumprod
    for j in (0, 5, 9):
        a_prev = ac[ts[j + 1]] if j + 1 < len(ts) else final_alpha(SD_V1, ac)
        ours = ddim_step(z, eps, ac[ts[j]], a_prev, kind)
        theirs = sched.step(eps, int(ts[j]), z, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_add_noise_matches_the_forward_process():
    sched = DDIMScheduler(**SD_V1)
    z0, eps, t = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.tensor([0, 999])
    out = add_noise(z0, eps, t, sched.alphas_cumprod)
    torch.testing.assert_close(out[:, 0, 0, 0], sched.alphas_cumprod[t].sqrt())


def test_training_target_is_the_noise_or_diffusers_velocity():
    sched = DDIMScheduler(**{**SD_V1, "prediction_type": "v_prediction"})
    gen = torch.Generator().manual_seed(1)
    z0, eps, t = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen), torch.tensor([5, 500, 990])
    assert training_target(z0, eps, t, sched.alphas_cumprod, "epsilon") is eps
    torch.testing.assert_close(training_target(z0, eps, t, sched.alphas_cumprod, "v_prediction"),
                               sched.get_velocity(z0, eps, t))
    assert prediction_type(sched) == "v_prediction"
    with pytest.raises(ValueError, match="unsupported prediction_type 'sample'"):
        prediction_type(DDIMScheduler(**{**SD_V1, "prediction_type": "sample"}))
