"""UnlearnDiffAtk (Zhang et al., ECCV 2024): find k prompt tokens that make an erased model draw the concept again.

For each prompt, k token slots are prepended (after SOT; or inserted at a given offset, e.g. where
the concept's word is, ``AttackConfig.insertion``). Discrete attack: a relaxed one-hot
distribution P over the whole vocabulary per slot, uniform at start; each step samples tokens from
P (straight-through: the forward pass sees the sample, the gradient reaches P), encodes the prompt
with the erased model's own text encoder, and minimises the diffusion loss of the erased UNet on a
target latent of the concept (drawn by the un-erased base model with the prompt's seed); Adam (lr
0.01, weight decay 0.1) on P, gradients clipped to [-1, 1] (hardtanh), P projected back onto the
simplex after every step. The schedule runs a block of steps at each timestep; after each block the
argmax tokens are judged on an image the erased model draws with the prompt's seed, and a prompt
stops at its first success (methods reference, section 4; defaults of ``configs/style/*.json``).
``soft`` optimises free embedding vectors instead (no projection to tokens): an upper bound,
reported apart from the discrete attack.

All prompts of a target are attacked as one batch (one UNet call per step for the batch, rather
than one process per prompt as the reference does); the state (P or the vectors, Adam moments,
finished prompts) is saved after every block, so a killed attack resumes with the same result.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from erase.attacks.tokens import check_vocabulary, encode, project_to_simplex, slotted_ids, straight_through, \
    with_tokens
from erase.sampling import add_noise, prediction_type, training_target
from pipelines.allocator import keep_freed_memory
from pipelines.stable_diffusion import generate

KINDS = ("unlearndiffatk", "soft")
INSERTIONS = ("prefix", "concept")
Judge = Callable[[np.ndarray], np.ndarray]  # uint8 images (N, H, W, 3) -> success per image (bool)


class AttackError(ValueError):
    """Attack settings or inputs that cannot work; one line."""


@dataclass
class AttackConfig:
    """Where the tokens go and how hard the attack tries; the reference's defaults (configs/style, configs/object).

    ``insertion``: ``prefix`` (after SOT, the reference's ``prefix_k``) or ``concept`` (where the target's
    word is in the prompt, the word after them; the reference's insertion variants place tokens inside
    the prompt too). Two results are comparable only when every field agrees.
    """

    tokens: int = 3  # k adversarial tokens (5 for nudity)
    insertion: str = "prefix"
    timesteps: int = 50  # blocks, at t = 10, 30, ..., 990 for 50 of a 1000-step schedule
    steps_per_timestep: int = 40  # Adam steps per block
    lr: float = 0.01
    weight_decay: float = 0.1
    judge_steps: int = 50  # sampler steps of the judged image (the reference: LMS 50; here the evaluation's DDIM)
    judge_guidance: float = 7.5

    def check(self) -> None:
        if self.tokens < 1:
            raise AttackError(f"the attack needs at least 1 token, got {self.tokens}")
        if self.timesteps < 1 or self.steps_per_timestep < 1:
            raise AttackError(f"the attack budget must be at least one step: {self.timesteps} timesteps x "
                              f"{self.steps_per_timestep} steps")
        if self.insertion not in INSERTIONS:
            raise AttackError(f"unknown insertion {self.insertion!r}; known: {', '.join(INSERTIONS)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.judge_steps < 1:
            raise AttackError("the attack needs lr > 0, weight_decay >= 0 and judge_steps >= 1")

    def schedule(self, train_steps: int = 1000) -> list[int]:
        """The timesteps of the blocks: evenly spaced mid-points, 10, 30, ..., 990 for 50 of 1000."""
        width = train_steps / self.timesteps
        return [int(width * i + width / 2) for i in range(self.timesteps)]


@dataclass
class PromptOutcome:
    """One prompt's result: success before the attack, after it, and the tokens that did it."""

    prompt: str
    seed: int
    success_before: bool
    success_after: bool
    token_ids: list[int] | None = None
    tokens_text: str | None = None
    steps: int | None = None  # gradient steps spent when the judge first said success
    at: int = 0  # character offset in ``prompt`` where the tokens go (``tokens.slotted_ids``)


@dataclass
class _State:
    block: int = 0
    outcomes: dict[int, dict] = field(default_factory=dict)  # prompt index -> PromptOutcome fields


def target_latents(pipe, images: np.ndarray, batch_size: int = 8) -> torch.Tensor:
    """Scaled VAE posterior means of uint8 target images (as the reference encodes x_tgt)."""
    vae, out = pipe.vae, []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def _step_generator(key: str, block: int, step: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{key}/{block}/{step}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class Attack:
    """One target's attack over many prompts; ``run`` returns a ``PromptOutcome`` per prompt."""

    def __init__(self, pipe, prompts: Sequence[str], seeds: Sequence[int], targets: torch.Tensor, judge: Judge,
                 budget: AttackConfig, kind: str = "unlearndiffatk", state_dir: str | Path | None = None,
                 progress: Callable[[int, int, int, int], None] | None = None, at: Sequence[int] | None = None,
                 identity: str = ""):
        """``at``: per prompt, the character offset of the slots (``slotted_ids``; None: prefix). ``progress``
        is called after every block with (blocks done, blocks, prompts solved, prompts). ``identity`` names
        the attacked model in the resume key, so another model's saved state is refused."""
        if kind not in KINDS:
            raise AttackError(f"unknown attack {kind!r}; known: {', '.join(KINDS)}")
        budget.check()
        if not len(prompts) == len(seeds) == len(targets):
            raise AttackError(f"{len(prompts)} prompts, {len(seeds)} seeds and {len(targets)} target latents")
        self.vocab = check_vocabulary(pipe.tokenizer, pipe.text_encoder)
        self.pipe, self.prompts, self.seeds, self.targets = pipe, list(prompts), list(seeds), targets
        self.judge, self.budget, self.kind, self.progress = judge, budget, kind, progress
        self.at = [0] * len(self.prompts) if at is None else [int(a) for a in at]
        self.ids, self.slots = slotted_ids(pipe.tokenizer, self.prompts, budget.tokens, self.at)
        self.plain_ids = pipe.tokenizer(self.prompts, padding="max_length", truncation=True,
                                        max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        self.embedding = pipe.text_encoder.get_input_embeddings().weight.detach()
        self.alphas = pipe.scheduler.alphas_cumprod
        self.prediction = prediction_type(pipe.scheduler)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._failed: dict[int, tuple[int, ...]] = {}  # prompt -> the last tokens the judge said failure to
        self.key = json.dumps({"kind": kind, "budget": asdict(budget), "prompts": self.prompts, "seeds": self.seeds,
                               "at": self.at, "model": identity})

    # ------------------------------------------------------------------ judging
    def _draw(self, index: list[int], vectors: torch.Tensor | None, tokens: torch.Tensor | None) -> np.ndarray:
        """The erased model's images of prompts ``index``: plain (neither given), with ``tokens`` in the slots,
        or with ``vectors`` there (soft)."""
        slots = self.slots[index]
        if vectors is None and tokens is None:
            ids = self.plain_ids[index]
        else:
            ids = self.ids[index] if tokens is None else with_tokens(self.ids[index], slots, tokens)
        with torch.no_grad():
            embeds = encode(self.pipe.text_encoder, ids, slots, vectors)
        return generate(self.pipe, None, [self.seeds[i] for i in index], steps=self.budget.judge_steps,
                        guidance_scale=self.budget.judge_guidance, prompt_embeds=embeds)

    # ------------------------------------------------------------------ state
    def _variables(self, n: int) -> torch.Tensor:
        if self.kind == "soft":  # start from the embeddings of random tokens, as AdvUnlearn's random init
            ids = torch.randint(0, self.vocab, (n, self.budget.tokens), generator=_step_generator(self.key, -1, 0))
            return self.embedding[ids].clone()
        return torch.full((n, self.budget.tokens, self.vocab), 1.0 / self.vocab)

    def _save(self, state: _State, active: list[int], var: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        moments = opt.state.get(var, {})
        tensors = {"var": var.detach().contiguous()}
        tensors.update({k: v.contiguous() for k, v in moments.items() if torch.is_tensor(v) and v.dim() > 0})
        step = float(moments["step"]) if "step" in moments else 0.0
        save_file(tensors, self.state_dir / ".attack.safetensors.tmp")
        meta = {"key": self.key, "block": state.block, "active": active, "adam_step": step,
                "outcomes": {str(i): o for i, o in state.outcomes.items()}}
        (self.state_dir / ".attack.json.tmp").write_text(json.dumps(meta))
        os.replace(self.state_dir / ".attack.safetensors.tmp", self.state_dir / "attack.safetensors")
        os.replace(self.state_dir / ".attack.json.tmp", self.state_dir / "attack.json")

    def _load(self) -> tuple[_State, list[int], torch.Tensor, dict] | None:
        if self.state_dir is None or not (self.state_dir / "attack.json").is_file():
            return None
        meta = json.loads((self.state_dir / "attack.json").read_text())
        if meta.get("key") != self.key:
            raise AttackError(f"{self.state_dir} holds the state of another attack (other model, prompts, seeds or "
                              "settings); remove it or write to another folder")
        tensors = load_file(self.state_dir / "attack.safetensors")
        moments = {k: v for k, v in tensors.items() if k != "var"}
        moments["step"] = torch.tensor(meta["adam_step"])
        state = _State(meta["block"], {int(i): o for i, o in meta["outcomes"].items()})
        return state, meta["active"], tensors["var"], moments

    # ------------------------------------------------------------------ the attack
    def _loss(self, active: list[int], var: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
        if self.kind == "soft":
            vectors = var
        else:
            _, one_hot = straight_through(var, gen)
            vectors = one_hot @ self.embedding.to(one_hot.dtype)
        cond = encode(self.pipe.text_encoder, self.ids[active], self.slots[active], vectors)
        z0 = self.targets[active].to(cond.device, cond.dtype)
        noise = torch.randn(z0.shape, generator=gen).to(z0)
        steps = torch.full((len(active),), t, dtype=torch.long)
        pred = self.pipe.unet(add_noise(z0, noise, steps, self.alphas), steps.to(z0.device),
                              encoder_hidden_states=cond).sample
        target = training_target(z0, noise, steps, self.alphas, self.prediction)
        # a sum of per-prompt means: each prompt's variables get their own, undiluted gradient
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1).sum()

    def run(self, before: Sequence[bool] | None = None, stop: Callable[[], bool] | None = None) -> list[PromptOutcome]:
        """Attack every prompt; ``before``: the judge's verdicts on the plain prompts' images when they are
        already known (an evaluation's answer set holds exactly those images), else they are drawn here.
        ``stop`` is asked after every block (e.g. a time budget ran out); prompts still open then fail."""
        keep_freed_memory()  # the per-step vocabulary-sized tensors would otherwise page-fault in every step
        resumed = self._load()
        if resumed is None:
            if before is None:
                before = self.judge(self._draw(list(range(len(self.prompts))), None, None))
            elif len(before) != len(self.prompts):
                raise AttackError(f"{len(before)} pre-attack verdicts for {len(self.prompts)} prompts")
            before = np.asarray(before, dtype=bool)
            state = _State(0, {i: asdict(PromptOutcome(p, s, True, True, steps=0, at=self.at[i]))
                               for i, (p, s, ok) in enumerate(zip(self.prompts, self.seeds, before)) if ok})
            active = [i for i in range(len(self.prompts)) if i not in state.outcomes]
            var, moments = self._variables(len(active)), {}
        else:
            state, active, var, moments = resumed
        var = var.requires_grad_(True)
        opt = torch.optim.Adam([var], lr=self.budget.lr, weight_decay=self.budget.weight_decay)
        if moments:
            opt.state[var] = moments
        for p in (*self.pipe.unet.parameters(), *self.pipe.text_encoder.parameters()):
            p.requires_grad_(False)
        schedule, per = self.budget.schedule(len(self.alphas)), self.budget.steps_per_timestep
        while active and state.block < len(schedule):
            for step in range(per):
                gen = _step_generator(self.key, state.block, step)
                opt.zero_grad(set_to_none=True)
                loss = self._loss(active, var, schedule[state.block], gen)
                loss.backward()
                var.grad.clamp_(-1, 1)
                opt.step()
                if self.kind != "soft":
                    with torch.no_grad():
                        var.copy_(project_to_simplex(var))
            tokens = None if self.kind == "soft" else var.detach().argmax(-1)
            won = self._judge_block(active, var, tokens)
            state.block += 1
            for j in np.flatnonzero(won):
                state.outcomes[active[j]] = asdict(self._outcome(active[j], tokens, j, True, state.block * per))
            keep = [j for j in range(len(active)) if not won[j]]
            active, var, opt = self._narrow(active, keep, var, opt)
            self._save(state, active, var, opt)
            if self.progress is not None:
                self.progress(state.block, len(schedule), len(self.prompts) - len(active), len(self.prompts))
            if stop is not None and stop():
                break
        final = None if self.kind == "soft" else var.detach().argmax(-1)
        for j, i in enumerate(active):
            state.outcomes[i] = asdict(self._outcome(i, final, j, False, state.block * per))
        return [PromptOutcome(**state.outcomes[i]) for i in range(len(self.prompts))]

    def _judge_block(self, active: list[int], var: torch.Tensor, tokens: torch.Tensor | None) -> np.ndarray:
        """Success per active prompt after a block. Discrete tokens a prompt was already judged (and failed)
        with are not drawn again: the same ids and seed draw the same image, so the verdict is known."""
        if tokens is None:
            return self.judge(self._draw(active, var.detach(), None)).astype(bool)
        fresh = [j for j, i in enumerate(active) if self._failed.get(i) != tuple(tokens[j].tolist())]
        won = np.zeros(len(active), dtype=bool)
        if fresh:
            won[fresh] = self.judge(self._draw([active[j] for j in fresh], None, tokens[fresh])).astype(bool)
        for j in fresh:
            if not won[j]:
                self._failed[active[j]] = tuple(tokens[j].tolist())
        return won

    def _outcome(self, index: int, tokens: torch.Tensor | None, row: int, success: bool, steps: int) -> PromptOutcome:
        ids = None if tokens is None else [int(t) for t in tokens[row]]
        text = None if ids is None else self.pipe.tokenizer.decode(ids)
        return PromptOutcome(self.prompts[index], self.seeds[index], False, success, ids, text,
                             steps if success else None, self.at[index])

    @staticmethod
    def _narrow(active: list[int], keep: list[int], var: torch.Tensor, opt: torch.optim.Optimizer):
        """Drop finished prompts from the batch: their rows of the variables and of Adam's moments."""
        if len(keep) == len(active):
            return active, var, opt
        moments = opt.state.get(var, {})
        new = var.detach()[keep].clone().requires_grad_(True)
        new_opt = torch.optim.Adam([new], **{k: opt.defaults[k] for k in ("lr", "weight_decay")})
        if moments:
            new_opt.state[new] = {k: (v[keep].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                                  for k, v in moments.items()}
        return [active[j] for j in keep], new, new_opt
