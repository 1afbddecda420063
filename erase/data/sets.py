"""Forget and retain sets handed to methods: images with their prompts, read from disk or drawn by the base model.

Methods read no files themselves. Two sources:

* a folder: the UnlearnCanvas layout ``<root>/<Style>/<Object>/<idx>.jpg`` (cells of the target are the
  forget set, every other cell of the concept's domain the retain set; theme folders outside the
  domain are ignored, as the benchmark ignores them), or images plus a ``metadata.jsonl`` with
  ``file_name`` and ``text`` per line (the Hugging Face imagefolder convention; rows whose text
  names the concept are the forget set);
* the base model itself, drawing prompts from the concept's caption grid (``default_prompts``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from erase.concepts import Concept, ConceptError
from erase.data.layout import DatasetLayoutError, read_layout
from pipelines.stable_diffusion import generate

RETAIN_OBJECTS = Path(__file__).resolve().parent / "retain_objects.txt"  # COCO's 80 categories


@dataclass
class ImageSet:
    """Images (N, 3, H, W) in [-1, 1], as a VAE encodes them, and the prompt of each."""

    images: torch.Tensor
    prompts: list[str]


def load_image(path: Path, size: int) -> torch.Tensor:
    """[-1, 1] CHW: resize the short side (bicubic), centre crop, as SalUn's ``SD/train-scripts/dataset.py`` does."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _listing(root: Path, concept: Concept) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(forget, retain) lists of (path, prompt) in a data folder."""
    forget: list[tuple[Path, str]] = []
    retain: list[tuple[Path, str]] = []
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item = (root / row["file_name"], str(row["text"]))
            except (ValueError, KeyError, TypeError):
                raise DatasetLayoutError(f"{meta} line {n}: expected a JSON object with file_name and text") from None
            (forget if concept.phrase.lower() in item[1].lower() else retain).append(item)
        return forget, retain
    index, domain = read_layout(root), concept.domain
    target = concept.name if domain else concept.text.replace(" ", "_")
    for (theme, obj), cell in sorted(index.images.items()):
        if domain is not None and theme not in domain.themes:
            continue  # the UnlearnCanvas download holds 10 styles the benchmark does not use
        prompt = domain.prompt(theme, obj) if domain else f"A {obj} image in {theme.replace('_', ' ')} style."
        side = forget if (theme if concept.kind == "style" else obj) == target else retain
        side.extend((p, prompt) for p in cell.values())
    return forget, retain


def read_forget_retain(root: str | Path, concept: Concept, forget_count: int, retain_count: int, size: int,
                       generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
    """A seeded random choice of ``forget_count`` / ``retain_count`` images from a data folder."""
    root = Path(root)
    forget, retain = _listing(root, concept)
    if not forget or not retain:
        raise DatasetLayoutError(f"{root} holds no {'forget' if not forget else 'retain'} images for "
                                 f"{concept.text!r}")
    out = []
    for items, count in ((forget, forget_count), (retain, retain_count)):
        pick = torch.randperm(len(items), generator=generator)[:count].tolist()
        out.append(ImageSet(torch.stack([load_image(items[i][0], size) for i in pick]), [items[i][1] for i in pick]))
    return out[0], out[1]


def default_prompts(concept: Concept, forget_templates: Sequence[str] = (), retain_prompts: Sequence[str] = ()
                    ) -> tuple[list[str], list[str]]:
    """Forget prompts (the concept's caption grid) and retain prompts (every other caption of its domain)."""
    domain = concept.domain
    if forget_templates:
        forget = concept.expand(forget_templates)
    elif domain is not None:
        forget = concept.expand(["A {object} image in {concept} style." if concept.kind == "style"
                                 else "A {concept} image in {style} style."])
    else:
        forget = concept.expand(["an image of {concept}"])
    if retain_prompts:
        retain = list(retain_prompts)
    elif domain is not None:
        retain = [domain.prompt(t, o) for t in domain.themes for o in domain.objects
                  if (t if concept.kind == "style" else o) != concept.name]
    else:
        raise ConceptError(f"{concept.text!r} is not a concept of a benchmark domain: give retain_prompts=... "
                           f"or data_dir=...")
    return forget, retain


def generate_set(pipe, prompts: Sequence[str], count: int, generator: torch.Generator, steps: int,
                 guidance: float, batch_size: int = 16) -> ImageSet:
    """``count`` images of the base model, prompts and seeds drawn from ``generator``."""
    pick = torch.randint(0, len(prompts), (count,), generator=generator).tolist()
    chosen = [prompts[i] for i in pick]
    seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()
    images = generate(pipe, chosen, seeds, steps=steps, guidance_scale=guidance, batch_size=batch_size)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, chosen)


def retain_prompts(source: str, concept: Concept) -> tuple[list[str], dict]:
    """Prompts a method keeps the model's behaviour on, minus those that name the concept, and a record of
    the filtering (for ``erase.json``). ``source``: ``coco-objects`` ('a photo of a {object}' over COCO's
    80 categories, shipped), ``domain`` (the concept's benchmark captions) or a text file, one prompt per
    line, ``#`` comments. A prompt is dropped when it contains the concept's phrase or any of its words
    longer than two letters. Raises ``ValueError`` (one line) when nothing is left or the source is unknown.
    """
    source = source.strip()
    if source == "domain":
        try:
            prompts = default_prompts(concept)[1]
        except ConceptError as err:
            raise ValueError(f"retain_prompts=domain: {err}") from None
    else:
        path = RETAIN_OBJECTS if source == "coco-objects" else Path(source)
        if not path.is_file():
            raise ValueError(f"retain_prompts: {source!r} is neither coco-objects, domain nor a text file")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    words = {w for w in re.findall(r"\w+", f"{concept.text} {concept.phrase}".lower()) if len(w) > 2}

    def names(prompt: str) -> bool:
        text = prompt.lower()
        return concept.phrase.lower() in text or bool(words & set(re.findall(r"\w+", text)))

    kept = [p for p in prompts if not names(p)]
    dropped = [p for p in prompts if names(p)]
    if not kept:
        raise ValueError(f"no retain prompt is left after dropping those that name {concept.text!r} "
                         f"({len(prompts)} read from {source!r})")
    return kept, {"source": source, "read": len(prompts), "kept": len(kept), "dropped": dropped,
                  "filter": f"words {sorted(words)}"}
