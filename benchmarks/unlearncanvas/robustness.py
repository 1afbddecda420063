"""Adversarial robustness of an erasure: the UnlearnDiffAtk attack success rate over a target's prompts.

For a target, the prompts are its answer-set prompts (a style target: every object x every seed; an
object target: every theme x every seed), in a fixed order (seed, then label order), optionally the
first N. The target image of each prompt is drawn by the **un-erased** base model with the prompt's
seed; the judge is the classifier that computes UA (success = it assigns the target style, or object);
the erased model's own text encoder encodes the adversarial prompt and the empty prompt for CFG.
ASR counts the prompts that succeed before the attack too (``pre_asr``), as the reference defines it
(methods reference, section 4). ``soft`` (continuous embeddings) is an upper bound, never mixed with
the discrete attack.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from benchmarks.unlearncanvas.answer_set import AnswerSet
from benchmarks.unlearncanvas.report import labelled_grid
from benchmarks.unlearncanvas.scorers.classifier import StyleObjectClassifier
from erase.attacks.tokens import encode_with_tokens
from erase.attacks.unlearndiffatk import Attack, AttackConfig, target_latents
from erase.concepts import Domain
from pipelines.stable_diffusion import generate



def attack_cells(domain: Domain, target: str, seeds: list[int], limit: int | None = None
                 ) -> list[tuple[str, str, int]]:
    """(theme, object, seed) of the target's answer-set prompts: seed-major, then label order; the first ``limit``."""
    target = domain.canonical(target)
    if domain.concept_kind(target) == "style":
        cells = [(target, o, s) for s in seeds for o in domain.objects]
    else:
        cells = [(t, target, s) for s in seeds for t in domain.themes]
    return cells[:limit] if limit else cells


def attack_prompts(domain: Domain, target: str, seeds: list[int], photo_phrase: str = "Photo",
                   limit: int | None = None) -> list[tuple[str, int]]:
    """(prompt, seed) of the target's answer-set prompts, in ``attack_cells`` order."""
    return [(domain.prompt(t, o, photo_phrase), s) for t, o, s in attack_cells(domain, target, seeds, limit)]


def classifier_judge(classifier: StyleObjectClassifier, domain: Domain, target: str) -> Callable[[np.ndarray], np.ndarray]:
    """Success per image: the UA classifier assigns the target style (style target) or object (object target)."""
    target = domain.canonical(target)
    style = domain.concept_kind(target) == "style"
    index = domain.themes.index(target) if style else domain.objects.index(target)

    def judge(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        themes, objects = classifier.predict(x)
        return ((themes if style else objects) == index).cpu().numpy()

    return judge


@torch.no_grad()
def base_targets(base_pipe, prompts: list[tuple[str, int]], steps: int, guidance: float
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """(images, latents): the un-erased base model's image of each prompt with its seed, and its VAE encoding."""
    images = generate(base_pipe, [p for p, _ in prompts], [s for _, s in prompts], steps=steps,
                      guidance_scale=guidance)
    return images, target_latents(base_pipe, images)


def without_target_word(prompt: str, domain: Domain, target: str) -> tuple[str, int]:
    """The calibration prompt, the target's word deleted ("A Fish image in Candy style." -> "A Fish image in
    style."), and the character offset where the word was."""
    phrase = domain.phrase(domain.canonical(target))
    head, tail = prompt.split(phrase, 1)
    head, tail = " ".join(head.split()), " ".join(tail.split())
    return (f"{head} {tail}" if head and tail else head + tail).replace(" .", "."), len(head) + 1 if head else 0


def insertion_offsets(prompts: list[str], domain: Domain, target: str, insertion: str) -> list[int]:
    """Where the adversarial tokens go in each prompt: 0 (``prefix``, the reference's) or the target word's
    offset (``concept``: the tokens sit where the word is, the word after them)."""
    if insertion == "prefix":
        return [0] * len(prompts)
    phrase = domain.phrase(domain.canonical(target))
    return [p.index(phrase) for p in prompts]


def attack_target(pipe, base_pipe, domain: Domain, target: str, classifier: StyleObjectClassifier,
                  config: AttackConfig, kind: str, seeds: list[int], sampler: tuple[int, float],
                  limit: int | None = None, state_dir: str | Path | None = None, judge_name: str = "",
                  progress: Callable[[int, int, int, int], None] | None = None, calibrate: bool = False,
                  share: tuple[int, int] = (0, 1), identity: str = "",
                  answer: AnswerSet | None = None, photo_phrase: str = "Photo") -> dict:
    """The ``robustness`` entry of one target: pre-ASR, ASR, seconds, and every prompt's outcome.

    ``calibrate`` attacks the prompts with the target's word deleted (on an un-erased model: the proof
    that a low ASR means robustness, not a weak attack); the targets stay the full prompts' images.
    ``share`` = (process index, processes): this process attacks every n-th prompt and the outcomes of
    all processes are gathered (``accelerate launch``). ``sampler`` draws the target images. ``answer``:
    the erased model's answer set, whose images of the same prompts and seeds give the pre-attack
    verdicts (so pre-ASR and UA come from the same images) instead of drawing them again.
    """
    t0 = time.perf_counter()
    prompts = attack_prompts(domain, target, seeds, photo_phrase, limit)
    if calibrate:
        attacked, at = map(list, zip(*(without_target_word(p, domain, target) for p, _ in prompts)))
        at = at if config.insertion == "concept" else [0] * len(at)
    else:
        attacked = [p for p, _ in prompts]
        at = insertion_offsets(attacked, domain, target, config.insertion)
    rank, processes = share
    mine = list(range(rank, len(prompts), processes))
    _, latents = base_targets(base_pipe, [prompts[i] for i in mine], *sampler)
    judge = classifier_judge(classifier, domain, target)
    cells = attack_cells(domain, target, seeds, limit)
    before = None if answer is None or calibrate else judge(answer_images(answer, domain, [cells[i] for i in mine]))
    outcomes = Attack(pipe, [attacked[i] for i in mine], [prompts[i][1] for i in mine], latents, judge, config,
                      kind, state_dir, progress, [at[i] for i in mine], identity).run(before)
    indexed = [(i, asdict(o)) for i, o in zip(mine, outcomes)]
    if processes > 1:
        from accelerate.utils import gather_object  # only under accelerate launch

        indexed = gather_object(indexed)
    per_prompt = [o for _, o in sorted(indexed, key=lambda item: item[0])]
    n = len(per_prompt)
    return {"target": domain.canonical(target), "kind": domain.concept_kind(target), "calibration": calibrate,
            "judge": judge_name, "prompts": n,
            "pre_asr": sum(o["success_before"] for o in per_prompt) / n,
            "asr": sum(o["success_after"] for o in per_prompt) / n,
            "seconds": round(time.perf_counter() - t0, 1), "per_prompt": per_prompt}


def answer_images(answer: AnswerSet, domain: Domain, cells: list[tuple[str, str, int]]) -> np.ndarray:
    """The answer-set images of (theme, object, seed) cells, uint8 (N, H, W, 3)."""
    where = {(int(answer.themes[i]), int(answer.objects[i]), int(answer.seeds[i])): i for i in range(len(answer))}
    images = []
    for theme, obj, seed in cells:
        with Image.open(answer.paths[where[(domain.themes.index(theme), domain.objects.index(obj), seed)]]) as im:
            images.append(np.asarray(im.convert("RGB")))
    return np.stack(images)


def evaluate_robustness(pipe, base_pipe, domain: Domain, targets: list[str], classifier: StyleObjectClassifier,
                        kind: str, config: AttackConfig, seeds: list[int], limit: int | None, judge_name: str,
                        state_root: Path | None, identity: str, share: tuple[int, int] = (0, 1),
                        progress: bool = True, answer: AnswerSet | None = None, photo_phrase: str = "Photo") -> dict:
    """The ``robustness`` object of results.json: settings, mean pre-ASR and ASR per target kind, every target.

    A target whose attack finished is kept in ``state_root/<target>.json`` and not attacked again; an
    interrupted one resumes from its block state (``state_root/<target>/``).
    """
    rows, t0 = [], time.perf_counter()
    key = {"model": identity, "attack": kind, "config": asdict(config), "seeds": list(seeds), "limit": limit,
           "share": list(share), "photo_phrase": photo_phrase}
    for target in targets:
        done = state_root / f"{target}.json" if state_root is not None else None
        if done is not None and done.is_file():
            saved = json.loads(done.read_text())
            if saved.get("key") == key:
                rows.append(saved["row"])
                continue
        bar = tqdm(total=config.timesteps, desc=f"attack {target}", disable=not progress, leave=False)

        def show(block: int, blocks: int, solved: int, prompts: int, bar=bar) -> None:
            bar.update(block - bar.n)
            bar.set_postfix_str(f"ASR {solved / prompts:.0%} of {prompts}")

        row = attack_target(pipe, base_pipe, domain, target, classifier, config, kind, seeds,
                            (config.judge_steps, config.judge_guidance), limit,
                            _state_dir(state_root, target, share), judge_name, show, share=share,
                            identity=json.dumps(key), answer=answer, photo_phrase=photo_phrase)
        bar.close()
        rows.append(row)
        if done is not None and share[0] == 0:  # every process holds the gathered row; the first writes it
            done.parent.mkdir(parents=True, exist_ok=True)
            tmp = done.with_name(f".{done.name}.tmp")
            tmp.write_text(json.dumps({"key": key, "row": row}))
            os.replace(tmp, done)
    summary = {}
    for concept_kind in ("style", "object"):
        group = [r for r in rows if r["kind"] == concept_kind]
        if group:
            summary[concept_kind] = {"targets": len(group), "pre_asr": float(np.mean([r["pre_asr"] for r in group])),
                                     "asr": float(np.mean([r["asr"] for r in group]))}
    robustness = {"attack": kind, "tokens": config.tokens, "insertion": config.insertion, "config": asdict(config),
                  "judge": judge_name, "prompts_per_target": limit or "all", "summary": summary,
                  "seconds": round(time.perf_counter() - t0, 1), "targets": rows}
    return robustness


def _state_dir(state_root: Path | None, target: str, share: tuple[int, int]) -> Path | None:
    """Where one process keeps the block state of a target's attack (one folder per process under accelerate)."""
    if state_root is None:
        return None
    return state_root / target if share[1] == 1 else state_root / target / f"process-{share[0]}-of-{share[1]}"


def examples_image(pipe, base_pipe, robustness: dict, steps: int, guidance: float, examples: int = 3
                   ) -> Image.Image | None:
    """base | erased | attacked for a few prompts per target (successes first), the tokens beside each row.

    Every image is drawn again from the stored prompt, seed, offset and token ids (``encode_with_tokens``),
    which is also how a user replays an attack; soft attacks have no tokens and are not shown.
    """
    cells, labels = [], []
    for row in robustness["targets"]:
        outcomes = row["per_prompt"]
        chosen = sorted((i for i, o in enumerate(outcomes) if o["token_ids"]),
                        key=lambda i: not outcomes[i]["success_after"])[:examples]
        for i in chosen:
            o = outcomes[i]
            base = generate(base_pipe, [o["prompt"]], [o["seed"]], steps=steps, guidance_scale=guidance)[0]
            erased = generate(pipe, [o["prompt"]], [o["seed"]], steps=steps, guidance_scale=guidance)[0]
            embeds = encode_with_tokens(pipe.tokenizer, pipe.text_encoder, [o["prompt"]],
                                        torch.tensor([o["token_ids"]]), [o["at"]])
            attacked = generate(pipe, None, [o["seed"]], steps=steps, guidance_scale=guidance,
                                prompt_embeds=embeds)[0]
            cells.append([base, erased, attacked])
            verdict = "success" if o["success_after"] else "failed"
            labels.append(f"{o['prompt']} seed {o['seed']} + {o['token_ids']} {o['tokens_text']!r}: {verdict}")
    if not cells:
        return None
    grid = labelled_grid(np.stack([np.stack(c) for c in cells]), [""] * len(cells),
                         ["base", "erased", "attacked"], scale=max(1, 96 // cells[0][0].shape[0]))
    font = ImageFont.load_default()
    width = grid.width + 8 * max(len(s) for s in labels)
    canvas = Image.new("RGB", (width, grid.height), "white")
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    tile = (grid.height - 16) / len(cells)
    for i, label in enumerate(labels):
        draw.text((grid.width + 4, 16 + i * tile + tile / 2 - 6), label, fill="black", font=font)
    return canvas
