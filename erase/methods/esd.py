"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345).

The UNet is fine-tuned so that, conditioned on the concept c, it predicts the negatively guided
noise of its frozen original:  y = eps*(z, ∅, t) - eta (eps*(z, c, t) - eps*(z, ∅, t)).
z is drawn by partial DDIM sampling with CFG from pure noise, with the model being trained (as the
paper and the CompVis code do). Defaults are the paper/CompVis setting (``train-esd.py`` @a2189e9).

Timestep offset (documented choice): the CompVis loop samples 51 - t_enc DDIM steps but queries
the UNet at t in [20 t_enc, 20 t_enc + 19], so the latent is 39-58 steps cleaner than its label.
By default we use the consistent form: run k steps and query at ``timesteps[k]``, the noise level
the latent really has. ``faithful_offset=true`` reproduces the CompVis behaviour for comparisons.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from erase.memory import MemoryProfile
from erase.methods.base import GradientMethod, named_trainable
from erase.methods.config import MethodConfigError, option
from erase.sampling import (ddim_timesteps, encode_prompts, final_alpha, latent_shape, partial_ddim,
                            prediction_type)

VARIANTS = ("auto", "esd-x", "esd-u", "esd-self", "esd-all", "esd-notime", "esd-x-strict")
_HEAD = ("time_embedding.", "conv_norm_out", "conv_out")


def select(variant: str):
    """Name filter of each ESD parameter set (methods reference, section 1, 'Parameter subsets')."""
    if variant == "esd-x":  # CompVis xattn: q/k/v/out of every cross-attention
        return lambda n: "attn2" in n
    if variant == "esd-x-strict":  # diffusers port: keys and values of cross-attention only
        return lambda n: "attn2.to_k" in n or "attn2.to_v" in n
    if variant == "esd-u":  # CompVis noxattn: everything but cross-attention, time embedding, output head
        return lambda n: "attn2" not in n and not n.startswith(_HEAD)
    if variant == "esd-self":  # CompVis selfattn
        return lambda n: "attn1" in n
    if variant == "esd-notime":  # CompVis notime
        return lambda n: not n.startswith(_HEAD)
    if variant == "esd-all":  # CompVis full
        return lambda n: True
    raise MethodConfigError(f"unknown ESD variant {variant!r}; choose one of {', '.join(VARIANTS)}")


@dataclass
class ESDConfig:
    variant: str = option("auto", "parameter set: auto (esd-x for styles, esd-u otherwise), " + ", ".join(VARIANTS[1:]),
                          "author guidance, rohitgandikota/erasing#8, #9")
    steps: int = option(1000, "optimizer steps", "train-esd.py L299 @a2189e9")
    lr: float = option(1e-5, "Adam learning rate", "train-esd.py L300 @a2189e9")
    negative_guidance: float = option(1.0, "eta, strength of the negative guidance target", "train-esd.py @a2189e9")
    start_guidance: float = option(3.0, "CFG scale of the partial DDIM sampling that draws z_t", "train-esd.py")
    ddim_steps: int = option(50, "DDIM steps of the sampling schedule (k is drawn from 0..ddim_steps-1)",
                             "train-esd.py")
    batch_size: int = option(1, "latents per step", "train-esd.py")
    prompts: list = option(["{concept}"], "prompt templates for c, one drawn per step; {object}/{style} expand "
                           "over the concept's benchmark domain", "paper: the concept word itself")
    erase_from: str = option("", "anchor concept: replace eps*(∅) in the target by eps*(anchor) and condition "
                             "on it (empty: unconditional, as the paper)", "esd_sd.py @25613d2")
    faithful_offset: bool = option(False, "reproduce the CompVis timestep offset (see module docstring)",
                                   "ddim.py L166-195 @a2189e9")
    sample_with: str = option("trained", "UNet that draws z_t: trained (paper, CompVis) or frozen (diffusers port)",
                              "train-esd.py vs esd_sd.py")


class ESD(GradientMethod):
    name = "esd"
    Config = ESDConfig
    summary = "negative-guidance fine-tuning of the UNet (ESD-x cross-attention / ESD-u non-cross-attention)"

    @classmethod
    def validate(cls, config: ESDConfig, concept) -> None:
        super().validate(config, concept)
        if config.sample_with not in ("trained", "frozen"):
            raise MethodConfigError(f"sample_with must be 'trained' or 'frozen', got {config.sample_with!r}")
        if config.ddim_steps < 1:
            raise MethodConfigError(f"ddim_steps must be at least 1, got {config.ddim_steps}")
        if config.variant not in VARIANTS:
            raise MethodConfigError(f"unknown ESD variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")

    @staticmethod
    def resolve_variant(config: ESDConfig, concept) -> str:
        return config.variant if config.variant != "auto" else ("esd-x" if concept.kind == "style" else "esd-u")

    @classmethod
    def memory_profile(cls, config: ESDConfig, concept, model) -> MemoryProfile:
        """Per latent: one UNet sample trained (the cross-attention figure for esd-x, else the full UNet's, an
        upper bound), 2 (3 with erase_from) frozen samples without grad; a frozen float32 copy of the UNet."""
        variant = cls.resolve_variant(config, concept)
        keep = select(variant)
        named = list(model.unet.named_parameters())
        trained = sum(p.numel() for n, p in named if keep(n))
        frozen = sum(p.numel() * p.element_size() for _, p in named)
        phase = "unet_train/attn2" if variant in ("esd-x", "esd-x-strict") else "unet_train/full"
        return MemoryProfile(phase, 1, 3 if config.erase_from else 2, trained, frozen)

    def setup(self, generator: torch.Generator) -> None:
        cfg, pipe = self.config, self.model
        self.variant = self.resolve_variant(cfg, self.concept)
        keep = select(self.variant)
        for module in (pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
        self.unet: nn.Module = pipe.unet
        self.frozen = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.params = named_trainable("unet", self.unet, keep)
        if not self.params:
            raise MethodConfigError(f"ESD variant {self.variant} selects no parameter of this UNet")
        prompts = self.concept.expand(list(cfg.prompts))
        emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts + [cfg.erase_from], self.device)
        self.cond, self.anchor = emb[:-1], emb[-1:]
        self.uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], self.device)
        sched = dict(pipe.scheduler.config)
        self.timesteps = ddim_timesteps(sched, cfg.ddim_steps).to(self.device)
        self.alphas = pipe.scheduler.alphas_cumprod.to(self.device)
        self.alpha_final = final_alpha(sched, pipe.scheduler.alphas_cumprod).to(self.device)
        self.T = int(sched["num_train_timesteps"])
        self.prediction = prediction_type(pipe.scheduler)  # targets below are affine, valid for eps and v

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return self.params

    def changed_components(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def run_info(self) -> dict:
        return {"variant": self.variant}

    def _draw(self, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """Number of DDIM steps to run and the DDPM timestep to query (see the offset note above)."""
        K = self.config.ddim_steps
        if not self.config.faithful_offset:
            k = int(torch.randint(0, K, (1,), generator=generator))
            return k, self.timesteps[k].view(1)
        t_enc = int(torch.randint(0, K, (1,), generator=generator))
        lo, hi = round(self.T * t_enc / K), round(self.T * (t_enc + 1) / K)
        t = torch.randint(lo, hi, (1,), generator=generator)
        return min(K, K + 1 - t_enc), t.to(self.device)

    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        b = cfg.batch_size
        idx = int(torch.randint(0, len(self.cond), (1,), generator=generator))
        c = self.cond[idx:idx + 1].expand(b, -1, -1)
        u = self.uncond.expand(b, -1, -1)
        anchor = self.anchor.expand(b, -1, -1) if cfg.erase_from else u
        n_steps, t = self._draw(generator)
        z = torch.randn(latent_shape(self.unet, b), generator=generator).to(self.device, c.dtype)
        sampler = self.unet if cfg.sample_with == "trained" else self.frozen
        z = partial_ddim(sampler, z, anchor if cfg.erase_from else c, u, self.timesteps, n_steps,
                         cfg.start_guidance, self.alphas, self.alpha_final, self.prediction)
        t = t.expand(b)
        with torch.no_grad():
            e = self.frozen(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([anchor, c])).sample
            e_anchor, e_c = e.chunk(2)
            # the guidance difference always uses ∅ (esd_sd.py ~L185-195 @25613d2)
            e_u = self.frozen(z, t, encoder_hidden_states=u).sample if cfg.erase_from else e_anchor
            target = e_anchor - cfg.negative_guidance * (e_c - e_u)
        pred = self.unet(z, t, encoder_hidden_states=anchor if cfg.erase_from else c).sample
        return F.mse_loss(pred.float(), target.float())
