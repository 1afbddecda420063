"""Pieces several diffusion methods share: prompt embeddings, noising, CFG, partial DDIM sampling.

Models predict either the noise (``epsilon``: SD 1.x) or ``v = sqrt(a) eps - sqrt(1 - a) z_0``
(``v_prediction``: SD 2.x, the embedded model), as the scheduler config says. Methods compare
model outputs in the model's own space (``training_target`` gives the matching regression
target); CFG and ESD's guided targets are affine combinations with weights summing to one, so
they are the same in either space.

The DDIM step is written out from ``alphas_cumprod`` instead of calling ``scheduler.step`` so that
training-time sampling holds no scheduler state and draws no randomness (eta 0), which keeps a
resumed run bit-identical to an uninterrupted one. A test checks it against ``DDIMScheduler.step``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DDIMScheduler


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device: torch.device | str | None = None,
                   batch_size: int = 64) -> torch.Tensor:
    """Last hidden states [N, 77, D] of the (frozen) text encoder, as Stable Diffusion conditions on them."""
    device = device or next(text_encoder.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = tokenizer(list(prompts[i:i + batch_size]), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


def latent_shape(unet, batch: int) -> tuple[int, int, int, int]:
    size = unet.config.sample_size
    return (batch, unet.config.in_channels, size, size)


def ddim_timesteps(scheduler_config: dict, steps: int) -> torch.Tensor:
    """The descending timesteps of ``steps``-step DDIM for this model's scheduler config.

    With the SD v1 config (steps_offset 1, leading spacing) and 50 steps this is 981, 961, ..., 1,
    the list the CompVis DDIMSampler uses (see the methods reference, section 0).
    """
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.clone().long()


def final_alpha(scheduler_config: dict, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha-bar after the last DDIM step: 1 with ``set_alpha_to_one``, else alpha-bar at t=0 (SD v1)."""
    return torch.tensor(1.0) if scheduler_config.get("set_alpha_to_one", True) else alphas_cumprod[0]


def add_noise(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """q(z_t | z_0) = sqrt(a_t) z_0 + sqrt(1 - a_t) eps, per-sample t."""
    a = alphas_cumprod.to(z0.device)[t.to(z0.device)].view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type(scheduler) -> str:
    """What the model predicts, from its scheduler config; anything else is refused, not guessed."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return kind


def training_target(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                    kind: str = "epsilon") -> torch.Tensor:
    """What a model of this prediction type should output for z_t = add_noise(z0, noise, t)."""
    if kind == "epsilon":
        return noise
    a = alphas_cumprod.to(z0.device)[t.to(z0.device)].view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return a.sqrt() * noise - (1 - a).sqrt() * z0


def cfg_prediction(unet, z: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor, uncond: torch.Tensor,
            scale: float) -> torch.Tensor:
    """Classifier-free guided prediction out(∅) + s (out(c) - out(∅)) in one batched call (eps or v)."""
    n = z.shape[0]
    t = torch.as_tensor(t, device=z.device).expand(2 * n) if torch.as_tensor(t).dim() == 0 else torch.cat([t, t])
    eps = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = eps.chunk(2)
    return e_u + scale * (e_c - e_u)


def ddim_step(z: torch.Tensor, pred: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor,
              kind: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM (eta 0) update from noise level a_t to a_prev, for an eps or v prediction."""
    a_t, a_prev = a_t.to(z), a_prev.to(z)
    if kind == "epsilon":
        eps = pred
        x0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    else:
        x0 = a_t.sqrt() * z - (1 - a_t).sqrt() * pred
        eps = a_t.sqrt() * pred + (1 - a_t).sqrt() * z
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


@torch.no_grad()
def partial_ddim(unet, z: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, timesteps: torch.Tensor,
                 n_steps: int, scale: float, alphas_cumprod: torch.Tensor, alpha_final: torch.Tensor,
                 kind: str = "epsilon") -> torch.Tensor:
    """Run the first ``n_steps`` of CFG DDIM from ``z`` (at ``timesteps[0]``); n_steps may be len(timesteps)."""
    for j in range(n_steps):
        t = timesteps[j]
        pred = cfg_prediction(unet, z, t, cond, uncond, scale)
        a_prev = alphas_cumprod[timesteps[j + 1]] if j + 1 < len(timesteps) else alpha_final
        z = ddim_step(z, pred, alphas_cumprod[t], a_prev, kind)
    return z


def image_size(pipe) -> int:
    """Pixel resolution the pipeline generates by default (512 for SD 1.x, 32 for the embedded model)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
