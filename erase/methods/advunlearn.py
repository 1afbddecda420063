"""AdvUnlearn (Zhang et al., NeurIPS 2024, arXiv 2405.15234; ``OPTML-Group/AdvUnlearn`` train-scripts/).

Adversarial training of the text encoder, a bi-level problem:

    min_phi  l_ESD(phi, c + delta*) + gamma * l_retain(phi, C_r),   delta* = argmin_delta l_atk(phi, c + delta)

Inner (attack): k free token embeddings delta, inserted into the concept prompt (after SOT as the
reference prepends them, or just before the concept's word), minimise ||eps(z, TE_phi(c + delta), t) -
eps(z, TE_0(c), t)||^2, i.e. make the erased encoder give back the original's concept prediction
(``pgd``: Adam on the gradient; ``fast_at``: Adam on its sign). Outer: ESD's negative-guidance loss
on the adversarial prompt (the clean one during warm-up) plus gamma times the squared gap to the
original encoder's predictions on retain prompts. The inner gradient is taken with
``torch.autograd.grad`` on delta only, so it never reaches the encoder's ``.grad``.

Memory by design: the UNet is frozen, so eps_theta and eps* are one UNet conditioned by the trained
or the original text encoder (a frozen copy of the encoder, small, gives TE_0). Under a bf16/fp16
``--mixed-precision`` that one UNet is kept in half precision; ``gradient_checkpointing`` trades UNet
recomputation for the activations of the backward pass to the encoder.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from erase.attacks.tokens import encode, slotted_ids
from erase.concepts import Concept
from erase.data.sets import retain_prompts
from erase.methods.base import SteppingMethod, named_trainable
from erase.methods.config import MethodConfigError, option
from erase.sampling import ddim_timesteps, encode_prompts, final_alpha, latent_shape, partial_ddim, prediction_type

COMPONENTS = ("full", "attn", "ffn")
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")


@dataclass
class AdvUnlearnConfig:
    steps: int = option(1000, "outer iterations", "AdvUnlearn.py --iterations")
    lr: float = option(1e-5, "Adam learning rate of the text encoder", "AdvUnlearn.py --lr (declared type=int)")
    component: str = option("full", "encoder parameters trained in the selected layers: full (all of them, plus the "
                            "final layer norm when every layer is selected: text_encoder_full), attn, ffn",
                            "utils/util.py L36-67")
    layers: list = option([], "encoder layer indices to train, exact (empty: every layer)",
                          "text_encoder_layerNN modes, without their prefix match (layer 1 also took 10, 11)")
    negative_guidance: float = option(1.0, "eta of the ESD target", "AdvUnlearn.py --negative_guidance")
    start_guidance: float = option(3.0, "CFG scale of the partial DDIM sampling that draws z_t",
                                   "AdvUnlearn.py --start_guidance")
    ddim_steps: int = option(50, "DDIM steps of the sampling schedule", "AdvUnlearn.py --ddim_steps")
    prompts: list = option(["{concept}"], "prompt templates of the concept, one drawn per step (as ESD's)",
                           "AdvUnlearn.py --prompt")
    retain_prompts: str = option("coco-objects", "retain prompts: coco-objects ('a photo of a {object}' over "
                                 "COCO's 80 categories, shipped), domain (the concept's benchmark captions without "
                                 "it) or a text file, one prompt per line; prompts naming the concept are dropped",
                                 "README --dataset_retain coco_object")
    retain_batch: int = option(5, "retain prompts per step", "AdvUnlearn.py --retain_batch")
    retain_train: str = option("reg", "reg: gamma * retain loss in the same step; iter: retain_step extra steps on it",
                               "README (argparse default iter)")
    retain_step: int = option(1, "extra optimizer steps on the retain loss per iteration (retain_train=iter)",
                              "AdvUnlearn.py --retain_step")
    gamma: float = option(0.3, "weight of the retain loss", "README --retain_loss_w (argparse default 1.0)")
    attack_method: str = option("pgd", "inner attack: pgd (Adam on the gradient, no norm ball) or fast_at "
                                "(Adam on its sign)", "README --attack_method; utils/attack_util.py")
    attack_tokens: int = option(1, "k, adversarial token embeddings", "AdvUnlearn.py --adv_prompt_num")
    attack_init: str = option("random", "random (embeddings of k random tokens each round) or latest (warm start "
                              "from the previous round)", "README --attack_init (argparse default latest)")
    attack_steps: int = option(30, "Adam steps of each attack round", "AdvUnlearn.py --attack_step")
    attack_lr: float = option(1e-3, "Adam learning rate of the attack", "AdvUnlearn.py --attack_lr")
    attack_every: int = option(1, "iterations between attack rounds", "AdvUnlearn.py --adv_prompt_update_step")
    warmup: int = option(200, "iterations without attack (clean concept prompt)", "AdvUnlearn.py --warmup_iter")
    insertion: str = option("prefix", "where delta goes: prefix (after SOT, the reference) or concept (just "
                            "before the concept's word, where the evaluation attack of a model that reads the "
                            "concept at its template position puts its tokens)", "paper Eq. 5: c + delta")
    attack_resample: bool = option(True, "draw a new z_t and t for every attack step (reference); false: attack "
                                   "on the iteration's own z_t (the cheaper variant of the methods reference)",
                                   "utils/attack_util.py L126-222")
    gradient_checkpointing: bool = option(False, "recompute UNet activations in the backward pass (less memory)")


def retain_set(config: AdvUnlearnConfig, concept: Concept) -> tuple[list[str], dict]:
    """The retain prompts after filtering against the concept, and what was done (for ``erase.json``)."""
    try:
        return retain_prompts(config.retain_prompts, concept)
    except ValueError as err:
        raise MethodConfigError(str(err)) from None


def select(component: str, layers: list[int], num_layers: int):
    """Name filter of the trained encoder parameters; layers by exact index (never a string prefix)."""
    chosen = set(layers) if layers else set(range(num_layers))

    def keep(name: str) -> bool:
        found = _LAYER.search(name)
        if found is None:
            return component == "full" and not layers and "final_layer_norm" in name
        if int(found.group(1)) not in chosen:
            return False
        return component == "full" or (".self_attn." if component == "attn" else ".mlp.") in name
    return keep


class AdvUnlearn(SteppingMethod):
    name = "advunlearn"
    Config = AdvUnlearnConfig
    summary = "adversarial training of the text encoder against a soft-prompt attack, with a retain loss"
    # whole encoders, as the reference releases them: CLIPTextModel.from_pretrained(<artifact>/text_encoder)
    # then plugs into any SD 1.x pipeline without this package
    artifact_format = "full"

    @classmethod
    def validate(cls, config: AdvUnlearnConfig, concept: Concept) -> None:
        super().validate(config, concept)
        choices = {"component": COMPONENTS, "retain_train": ("reg", "iter"), "attack_method": ("pgd", "fast_at"),
                   "attack_init": ("random", "latest"), "insertion": ("prefix", "concept")}
        for key, allowed in choices.items():
            if getattr(config, key) not in allowed:
                raise MethodConfigError(f"unknown {key} {getattr(config, key)!r}; choose one of {', '.join(allowed)}")
        for key in ("attack_tokens", "attack_steps", "attack_every", "retain_batch", "retain_step", "ddim_steps"):
            if getattr(config, key) < 1:
                raise MethodConfigError(f"option {key} must be at least 1, got {getattr(config, key)}")
        if config.gamma < 0 or config.warmup < 0 or not config.attack_lr > 0:
            raise MethodConfigError(f"AdvUnlearn needs gamma >= 0, warmup >= 0 and attack_lr > 0 (got gamma "
                                    f"{config.gamma}, warmup {config.warmup}, attack_lr {config.attack_lr})")
        try:
            layers = [int(x) for x in config.layers]
        except (TypeError, ValueError):
            raise MethodConfigError(f"layers must be integer layer indices, got {config.layers!r}") from None
        if any(i < 0 for i in layers):
            raise MethodConfigError(f"layers must be >= 0, got {layers}")
        retain_set(config, concept)

    def setup(self, generator: torch.Generator) -> None:
        cfg, pipe = self.config, self.model
        pipe.unet.requires_grad_(False).eval()
        pipe.vae.requires_grad_(False)
        self.unet: nn.Module = pipe.unet
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.text_encoder: nn.Module = pipe.text_encoder.eval()
        self.original = copy.deepcopy(self.text_encoder).requires_grad_(False)  # TE_0: the targets
        num_layers = int(self.text_encoder.config.num_hidden_layers)
        layers = [int(x) for x in cfg.layers]
        if any(i >= num_layers for i in layers):
            raise MethodConfigError(f"layers {layers}: this text encoder has layers 0..{num_layers - 1}")
        self.params = named_trainable("text_encoder", self.text_encoder, select(cfg.component, layers, num_layers))
        if not self.params:
            raise MethodConfigError(f"component {cfg.component} with layers {layers or 'all'} selects no parameter")
        self.prompts = self.concept.expand(list(cfg.prompts))
        self.retain, self.retain_info = retain_set(cfg, self.concept)
        tok = pipe.tokenizer
        at = [0] * len(self.prompts) if cfg.insertion == "prefix" else [self._offset(p) for p in self.prompts]
        self.ids, self.slots = slotted_ids(tok, self.prompts, cfg.attack_tokens, at)
        self.plain_ids = tok(self.prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        self.retain_ids = tok(self.retain, padding="max_length", max_length=tok.model_max_length, truncation=True,
                              return_tensors="pt").input_ids
        self.cond0 = encode_prompts(tok, self.original, self.prompts, self.device)
        self.uncond0 = encode_prompts(tok, self.original, [""], self.device)
        self.embedding = self.text_encoder.get_input_embeddings().weight.detach()
        self.delta = self._random_delta(generator)  # the prefix state: carried and checkpointed
        self.rounds = torch.zeros((), dtype=torch.long)
        sched = dict(pipe.scheduler.config)
        self.timesteps = ddim_timesteps(sched, cfg.ddim_steps).to(self.device)
        self.alphas = pipe.scheduler.alphas_cumprod.to(self.device)
        self.alpha_final = final_alpha(sched, pipe.scheduler.alphas_cumprod).to(self.device)
        self.prediction = prediction_type(pipe.scheduler)
        self.half: torch.dtype | None = None
        self.precision_checked = False

    def _offset(self, prompt: str) -> int:
        found = prompt.lower().find(self.concept.phrase.lower())
        if found < 0:
            raise MethodConfigError(f"insertion=concept: the prompt {prompt!r} does not contain {self.concept.phrase!r}")
        return found

    def _random_delta(self, generator: torch.Generator) -> torch.Tensor:
        ids = torch.randint(0, self.embedding.shape[0], (1, self.config.attack_tokens), generator=generator)
        return self.embedding[ids.to(self.embedding.device)].clone().float()

    # ------------------------------------------------------------------ contract
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return self.params

    def changed_components(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta, "rounds": self.rounds}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.delta, self.rounds = tensors["delta"].clone(), tensors["rounds"].clone()

    def run_info(self) -> dict:
        return {"retain": self.retain_info, "trained_tensors": len(self.params),
                "trained_parameters": sum(p.numel() for p in self.params.values()),
                "attack_rounds": int(self.rounds), "unet_dtype": str(self.half or self.unet.dtype).replace("torch.", ""),
                "delta_norm": round(float(self.delta.norm(dim=-1).mean()), 4)}

    # ------------------------------------------------------------------ pieces
    def _eps(self, z: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(z.to(dtype), t, encoder_hidden_states=states.to(dtype)).sample.float()

    def _draw(self, generator: torch.Generator, batch: int, cond: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(DDIM steps run, timestep, z_t): z_t drawn by partial CFG DDIM conditioned by the original encoder."""
        n_steps = int(torch.randint(0, self.config.ddim_steps, (1,), generator=generator))
        return n_steps, self.timesteps[n_steps].view(1).expand(batch), self._sample_at(generator, n_steps, cond)

    def _sample_at(self, generator: torch.Generator, n_steps: int, cond: torch.Tensor) -> torch.Tensor:
        """z_t after ``n_steps`` of partial CFG DDIM from noise, one latent per row of ``cond``."""
        batch = len(cond)
        z = torch.randn(latent_shape(self.unet, batch), generator=generator).to(self.device, self.unet.dtype)
        return partial_ddim(self.unet, z, cond.to(z.dtype), self.uncond0.expand(batch, -1, -1).to(z.dtype),
                            self.timesteps, n_steps, self.config.start_guidance, self.alphas, self.alpha_final,
                            self.prediction).float()

    def attack(self, index: int, z: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One round of the inner attack on prompt ``index``; returns the new delta. The encoder's weights and
        ``.grad`` are untouched: the gradient is taken with respect to delta alone."""
        cfg = self.config
        start = self._random_delta(generator) if cfg.attack_init == "random" else self.delta
        delta = start.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=cfg.attack_lr)
        ids, slots, cond0 = self.ids[index:index + 1], self.slots[index:index + 1], self.cond0[index:index + 1]
        for _ in range(cfg.attack_steps):
            if cfg.attack_resample:
                _, t, z = self._draw(generator, 1, cond0)
            with torch.no_grad():
                target = self._eps(z, t, cond0)
            states = encode(self.text_encoder, ids, slots, delta)
            loss = F.mse_loss(self._eps(z, t, states), target)
            (grad,) = torch.autograd.grad(loss, [delta])
            delta.grad = grad.sign() if cfg.attack_method == "fast_at" else grad
            opt.step()
        return delta.detach()

    def _retain_loss(self, generator: torch.Generator, n_steps: int, t: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, len(self.retain), (self.config.retain_batch,), generator=generator)
        ids = self.retain_ids[pick].to(self.device)
        t = t[:1].expand(len(pick))
        with torch.no_grad():
            cond0 = self.original(ids)[0]
            z = self._sample_at(generator, n_steps, cond0)
            target = self._eps(z, t, cond0)
        pred = self._eps(z, t, self.text_encoder(ids)[0])
        return F.mse_loss(pred, target)

    def _half_unet(self, ctx) -> None:
        """Keep the one frozen UNet in the autocast precision (its weights are never saved)."""
        with ctx.autocast():
            kind = self.device.type
            if torch.is_autocast_enabled(kind) and self.unet.dtype == torch.float32:
                self.half = torch.get_autocast_dtype(kind)
                self.unet.to(self.half)

    def training_step(self, ctx) -> float:
        cfg, gen = self.config, ctx.generator()
        if not self.precision_checked:  # once per (resumed) run: the step context knows the precision
            self._half_unet(ctx)
            self.precision_checked = True
        index = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond0 = self.cond0[index:index + 1]
        adversarial = ctx.step >= cfg.warmup
        with ctx.autocast():
            n_steps, t, z = self._draw(gen, 1, cond0)
            if adversarial and (ctx.step - cfg.warmup) % cfg.attack_every == 0:
                self.delta = self.attack(index, z, t, gen)
                self.rounds += 1
            with torch.no_grad():
                e = self._eps(torch.cat([z, z]), torch.cat([t, t]), torch.cat([self.uncond0, cond0]))
                e_u, e_c = e.chunk(2)
                target = e_u - cfg.negative_guidance * (e_c - e_u)
            if adversarial:
                states = encode(self.text_encoder, self.ids[index:index + 1], self.slots[index:index + 1], self.delta)
            else:
                states = encode(self.text_encoder, self.plain_ids[index:index + 1])
            loss_u = F.mse_loss(self._eps(z, t, states), target)
            ctx.optimizer.zero_grad(set_to_none=True)
            if cfg.retain_train == "reg":
                loss = loss_u + cfg.gamma * self._retain_loss(gen, n_steps, t)
                ctx.backward(loss)
                ctx.step_optimizer(self.params.values())
                return float(loss.detach())
            ctx.backward(loss_u)
            ctx.step_optimizer(self.params.values())
            for _ in range(cfg.retain_step):
                ctx.optimizer.zero_grad(set_to_none=True)
                loss_r = cfg.gamma * self._retain_loss(gen, n_steps, t)
                ctx.backward(loss_r)
                ctx.step_optimizer(self.params.values())
            return float(loss_u.detach())
