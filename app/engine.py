"""What the playground computes, without the page: a grid of images, the judges' verdicts, a bounded attack.

The base pipeline is loaded once; each erased artifact gets its own copy of only the components it
changed (``erase.loading.erased_copy``: strict and hash-checked), the rest is shared, so comparing a
Stable Diffusion 1.5 erasure costs one extra UNet, not a second pipeline. Every row of a grid uses
the same seeds, so every difference between rows is the erasure. The judges are the evaluation's for
the model's world (``benchmarks.unlearncanvas.judges``): the MiniCanvas classifier and CLIP, or the
UnlearnCanvas checkpoints and an open_clip model when given. Every input from the page is bounded
here (``Bounds``), with a notice saying what was changed, so no request can take the server down.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from benchmarks.unlearncanvas.config import EvalConfig
from benchmarks.unlearncanvas.judges import load_classifier, load_clip
from benchmarks.unlearncanvas.protocol import ATTACK_DEFAULTS
from benchmarks.unlearncanvas.robustness import base_targets, classifier_judge, insertion_offsets
from erase.artifacts import ArtifactError, EraseRecord, read_record
from erase.attacks.tokens import encode_with_tokens
from erase.attacks.unlearndiffatk import Attack
from erase.concepts import Domain, find_domain
from erase.loading import base_id, erased_copy
from erase.trainer import MAX_SEED
from pipelines.stable_diffusion import generate, load_pipeline

BASE = "base (no erasure)"


@dataclass(frozen=True)
class Bounds:
    """What one request may ask for; values outside are clamped with a notice, never passed on."""

    max_prompt_chars: int = 2000
    max_seeds: int = 8
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    attack_seconds: float = 30.0  # the attack's time budget; set at launch, the page cannot raise it


@dataclass
class Verdict:
    """The judges' reading of one image: classifier top-1 per axis with probability, CLIP's assignment,
    and the probability of the erased concept (``concept_p``) under the classifier."""

    style: str
    style_p: float
    obj: str
    obj_p: float
    clip: str | None
    concept: str | None
    concept_p: float | None
    probabilities: dict[str, float] = field(default_factory=dict, repr=False)  # every theme and object

    def text(self, base: "Verdict | None" = None) -> str:
        """'Neon 1.00 · Fish 0.89 · CLIP: Neon/Fish · **Candy 0.00 (base 1.00)**': the base image's
        probability of this row's concept (not of the base row's own), so each erased row reads alone."""
        words = [f"{self.style} {self.style_p:.2f}", f"{self.obj} {self.obj_p:.2f}"]
        if self.clip:
            words.append(f"CLIP: {self.clip}")
        if self.concept is not None:
            mark = f"{self.concept} {self.concept_p:.2f}"
            if base is not None and self.concept in base.probabilities:
                mark += f" (base {base.probabilities[self.concept]:.2f})"
            words.append(f"**{mark}**")
        return " · ".join(words)


@dataclass
class Grid:
    """One prompt, its seeds, a row of images and verdicts per model (the base first)."""

    prompt: str
    seeds: list[int]
    rows: list[str]
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    verdicts: dict[str, list[Verdict]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


@dataclass
class AttackResult:
    label: str
    prompt: str
    seed: int
    success_before: bool
    success_after: bool
    token_ids: list[int]
    tokens_text: str
    adversarial_prompt: str  # the tokens' text put where they were inserted; re-typed, it may tokenize otherwise
    images: dict[str, np.ndarray]  # base, erased, attacked
    verdicts: dict[str, Verdict]
    seconds: float


class Playground:
    """A base pipeline, the erased pipelines built on it (one per artifact, by label), and the judges."""

    def __init__(self, model: str | None, artifacts: Sequence[str | Path], device: str | None = None,
                 base: StableDiffusionPipeline | None = None, judges: EvalConfig | None = None,
                 bounds: Bounds = Bounds()):
        """``base``: an already loaded base pipeline to build on (shared, never changed). ``judges``: the
        classifier/CLIP options of ``unlearncanvas-eval`` (default: the shipped MiniCanvas ones when the
        artifacts' concepts are MiniCanvas concepts; no verdicts for a world without judges)."""
        if not artifacts:
            raise ArtifactError("give at least one --artifact folder made by erase-concept")
        records = [read_record(a) for a in artifacts]
        self.bounds = bounds
        self.base = base if base is not None else load_pipeline(base_id(records[0], artifacts[0], model))
        self.erased: dict[str, StableDiffusionPipeline] = {}
        self.metadata: dict[str, EraseRecord] = {}
        for folder, record in zip(artifacts, records):
            label = f"{record.method}: {record.concept} ({Path(folder).name})"
            self.erased[label] = erased_copy(self.base, folder)  # ArtifactError when a component is missing or differs
            self.metadata[label] = record
        if device is not None:
            for pipe in (self.base, *self.erased.values()):
                pipe.to(device)
        self.domain: Domain | None = find_domain(records[0].concept)
        self.classifier, self.clip, self.judge_name, self.judge_note = None, None, "", ""
        if self.domain is not None:
            config = judges or EvalConfig(domain=self.domain.name, use_fid=False)
            try:
                # the judges run where the models do; they take CPU images and give CPU verdicts either way
                self.classifier, self.judge_name = load_classifier(config, self.domain, device or "cpu")
                self.clip = load_clip(config, self.domain, device or "cpu")
            except ValueError as err:  # e.g. the UnlearnCanvas world without its checkpoints: images only
                self.judge_note = f"no verdicts: {str(err).splitlines()[0]}"
        else:
            self.judge_note = "no verdicts: the erased concept is not one of a benchmark world's concepts"
        self._grid_text = self.clip.grid_texts(self.domain) if self.clip is not None else None

    # ------------------------------------------------------------------ bounds
    def prompt_in_bounds(self, prompt: str | None) -> tuple[str, list[str]]:
        """The prompt the models will read, and notices: cut to ``max_prompt_chars``, then to the tokenizer's
        77 tokens (the text encoder reads no more; shown so the user sees what was drawn)."""
        prompt, notices = " ".join((prompt or "").split()), []
        if not prompt:
            raise ValueError("type a prompt first")
        if len(prompt) > self.bounds.max_prompt_chars:
            notices.append(f"prompt cut to {self.bounds.max_prompt_chars:,} of its {len(prompt):,} characters")
            prompt = prompt[:self.bounds.max_prompt_chars]
        tok = self.base.tokenizer
        ids = tok(prompt, truncation=False).input_ids
        if len(ids) > tok.model_max_length:
            prompt = tok.decode(ids[1:tok.model_max_length - 1])
            notices.append(f"prompt truncated to the text encoder's {tok.model_max_length} tokens ({len(ids)} "
                           f"given): the models read \"{prompt}\"")
        return prompt, notices

    def numbers_in_bounds(self, seed, count, steps, guidance) -> tuple[list[int], int, float, list[str]]:
        """Seeds (``count`` from ``seed``), steps and guidance, clamped to what a request may ask, with notices."""
        notices = []

        def clamp(name: str, value, low, high, whole: bool = True):
            try:
                number = (int(value) if isinstance(value, int) else int(float(value))) if whole else float(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if number != number:  # NaN
                raise ValueError(f"{name} must be a number, got NaN")
            if not low <= number <= high:
                notices.append(f"{name} {value} out of range, used {min(max(number, low), high)} "
                               f"(allowed {low} .. {high})")
                number = min(max(number, low), high)
            return number

        count = clamp("number of seeds", count, 1, self.bounds.max_seeds)
        first = clamp("seed", seed, 0, MAX_SEED - (count - 1))
        steps = clamp("steps", steps, 1, self.bounds.max_steps)
        guidance = clamp("guidance", guidance, self.bounds.min_guidance, self.bounds.max_guidance, whole=False)
        return [first + i for i in range(count)], steps, guidance, notices

    # ------------------------------------------------------------------ judges
    def verdicts(self, images: np.ndarray, concept: str | None) -> list[Verdict] | None:
        """The classifier's and CLIP's reading of uint8 images (N, H, W, 3); None without judges."""
        if self.classifier is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        styles, objects = self.classifier.predict_proba(x)
        clip = None
        if self.clip is not None:
            ps, po = self.clip.zero_shot(self.clip.encode_images(x), self.domain, grid_text=self._grid_text)
            clip = [f"{self.domain.themes[s]}/{self.domain.objects[o]}" for s, o in zip(ps.tolist(), po.tolist())]
        name = self.domain.canonical(concept) if concept else None
        out = []
        for i in range(len(images)):
            s, o = int(styles[i].argmax()), int(objects[i].argmax())
            probabilities = {**dict(zip(self.domain.themes, styles[i].tolist())),
                             **dict(zip(self.domain.objects, objects[i].tolist()))}
            out.append(Verdict(self.domain.themes[s], float(styles[i, s]), self.domain.objects[o],
                               float(objects[i, o]), clip[i] if clip else None, name,
                               probabilities[name] if name else None, probabilities))
        return out

    # ------------------------------------------------------------------ the grid
    def grid(self, prompt: str, seed, count, steps, guidance) -> Grid:
        """The base model's row and one row per erased model, all from the same seeds."""
        prompt, notices = self.prompt_in_bounds(prompt)
        seeds, steps, guidance, more = self.numbers_in_bounds(seed, count, steps, guidance)
        result = Grid(prompt, seeds, [BASE, *self.erased], notices=notices + more)
        concept = self.metadata[next(iter(self.erased))].concept
        for label in result.rows:
            pipe = self.base if label == BASE else self.erased[label]
            images = generate(pipe, [prompt] * len(seeds), seeds, steps=steps, guidance_scale=guidance,
                              batch_size=len(seeds))
            result.images[label] = list(images)
            row_concept = concept if label == BASE else self.metadata[label].concept
            verdicts = self.verdicts(images, row_concept)
            if verdicts is not None:
                result.verdicts[label] = verdicts
        return result

    # ------------------------------------------------------------------ the attack
    def attack(self, prompt: str, label: str, seed, steps, guidance,
               progress: Callable[[float, str], None] | None = None) -> AttackResult:
        """UnlearnDiffAtk on one prompt and seed against one erased model, stopped at the time budget.

        The target image is the base model's drawing of the prompt with the seed; the judge is the
        classifier (success = it assigns the erased concept); the world's default attack settings
        (``protocol.ATTACK_DEFAULTS``), the tokens where the concept's word is when the prompt holds it.
        """
        if label not in self.erased:
            raise ValueError(f"unknown erased model {label!r}")
        if self.classifier is None:
            raise ValueError(f"the attack needs a judge; {self.judge_note}")
        prompt, _ = self.prompt_in_bounds(prompt)
        (seed,), steps, guidance, _ = self.numbers_in_bounds(seed, 1, steps, guidance)
        record, pipe = self.metadata[label], self.erased[label]
        concept = self.domain.canonical(record.concept)
        insertion = ATTACK_DEFAULTS[self.domain.name].insertion
        config = dataclasses.replace(ATTACK_DEFAULTS[self.domain.name], judge_steps=steps, judge_guidance=guidance,
                                     insertion=insertion if self.domain.phrase(concept) in prompt else "prefix")
        at = insertion_offsets([prompt], self.domain, concept, config.insertion)
        t0 = time.monotonic()
        base_image, latents = base_targets(self.base, [(prompt, seed)], steps, guidance)
        judge = classifier_judge(self.classifier, self.domain, concept)

        ends = [time.monotonic()]  # when each block ended: the next one is expected to take as long

        def report(block: int, blocks: int, solved: int, prompts: int) -> None:
            ends.append(time.monotonic())
            if progress is not None:
                progress(block / blocks, f"block {block}/{blocks}, {ends[-1] - t0:.0f} s")

        def out_of_time() -> bool:  # stop before a block that would end past the budget
            return ends[-1] - t0 + (ends[-1] - ends[-2]) > self.bounds.attack_seconds

        (outcome,) = Attack(pipe, [prompt], [seed], latents, judge, config, progress=report, at=at).run(
            stop=out_of_time)
        erased_image = generate(pipe, [prompt], [seed], steps=steps, guidance_scale=guidance)[0]
        ids = outcome.token_ids or []
        attacked = erased_image
        if ids:
            embeds = encode_with_tokens(pipe.tokenizer, pipe.text_encoder, [prompt], torch.tensor([ids]), at)
            attacked = generate(pipe, None, [seed], steps=steps, guidance_scale=guidance, prompt_embeds=embeds)[0]
        images = {"base": base_image[0], "erased": erased_image, "attacked": attacked}
        verdicts = dict(zip(images, self.verdicts(np.stack(list(images.values())), concept)))
        text = outcome.tokens_text or ""
        adversarial = f"{prompt[:at[0]]}{text} {prompt[at[0]:]}".strip() if text else prompt
        return AttackResult(label, prompt, seed, outcome.success_before, outcome.success_after, ids, text,
                            adversarial, images, verdicts, round(time.monotonic() - t0, 1))
