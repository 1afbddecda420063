"""The UnlearnCanvas answer set: every theme x object x seed prompt, one image each, in one folder.

Files are named as the official samplers name them (``<Theme>_<Object>_seed<s>.<ext>``), so an
answer set made here can be scored by the official scripts and vice versa. Generation is:

* batched (``generate`` draws image i from its own generator seeded ``seeds[i]``, so batch size
  and process count never change an image);
* resumable: images already on disk are kept, each new image is written under a temporary name
  and renamed into place, so a kill leaves only complete images;
* shardable: with ``num_processes`` > 1 (``accelerate launch``) process r draws the r-th share
  of the missing images;
* guarded: ``answer_set.json`` records the sampler settings, and a folder made with other
  settings is refused instead of being silently mixed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.unlearncanvas.protocol import answer_file_name, parse_answer_file_name
from erase.concepts import Domain
from pipelines.stable_diffusion import generate

MANIFEST = "answer_set.json"


class AnswerSetError(ValueError):
    """An answer-set folder that is empty, incomplete or made with other settings."""


@dataclass(frozen=True)
class AnswerItem:
    theme: str
    obj: str
    seed: int
    prompt: str

    def file_name(self, ext: str) -> str:
        return answer_file_name(self.theme, self.obj, self.seed, ext)


@dataclass
class SamplerSettings:
    """What, besides the model, decides an answer-set image; stored in ``answer_set.json``."""

    steps: int
    guidance_scale: float
    scheduler: str = "DDIM"
    eta: float = 0.0
    size: int | None = None  # None: the model's native size
    photo_phrase: str = "Photo"
    ext: str = "png"
    seeds: list[int] = field(default_factory=list)
    themes: list[str] | None = None  # None: every theme (a subset only for smoke tests)
    objects: list[str] | None = None  # None: every object

    GRID = ("seeds", "themes", "objects")  # which images, not how they look: a folder may hold more


def answer_grid(domain: Domain, seeds: Sequence[int], photo_phrase: str = "Photo",
                themes: Sequence[str] | None = None, objects: Sequence[str] | None = None) -> list[AnswerItem]:
    """Every (seed, theme, object) of the protocol (or of the given subset), in label order (photo theme included)."""
    themes = [t for t in domain.themes if themes is None or t in themes]
    objects = [o for o in domain.objects if objects is None or o in objects]
    return [AnswerItem(t, o, int(s), domain.prompt(t, o, photo_phrase)) for s in seeds for t in themes for o in objects]


def read_manifest(folder: str | Path) -> dict | None:
    """The settings an answer-set folder was made with (``answer_set.json``), or None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise AnswerSetError(f"corrupt {path}: not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise AnswerSetError(f"corrupt {path}: no 'model' entry")
    return data


def _check_manifest(folder: Path, settings: SamplerSettings, model_id: str) -> dict | None:
    """The folder's manifest (None when new); refuses other settings or a foreign folder."""
    path = folder / MANIFEST
    want = {"model": model_id, **asdict(settings)}
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except ValueError:
            raise AnswerSetError(f"corrupt {path}; delete it only if every image in {folder} was made "
                                 f"with the current settings") from None
        diff = [k for k in want if k not in SamplerSettings.GRID and have.get(k) != want[k]]
        if diff:
            k = diff[0]
            raise AnswerSetError(f"{folder} was generated with {k}={have.get(k)!r}, this run uses {want[k]!r}; "
                                 f"use another --answer-set folder or the same settings")
        return have
    else:
        stray = [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
        if stray:
            raise AnswerSetError(f"{folder} is not empty and holds no {MANIFEST} (e.g. {stray[0]}); "
                                 f"choose a new folder for the answer set")
    return None


def _union(have: list | None, want: list | None) -> list | None:
    """Grid entries of two runs into one folder (None = all of them)."""
    if have is None or want is None:
        return None
    return list(dict.fromkeys([*have, *want]))


def write_manifest(folder: Path, settings: SamplerSettings, model_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"model": model_id, **asdict(settings)}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def _save_atomic(image: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(image).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    os.replace(tmp, path)


def generate_answer_set(pipe, folder: str | Path, domain: Domain, settings: SamplerSettings, model_id: str,
                        batch_size: int = 64, process_index: int = 0, num_processes: int = 1,
                        on_batch: Callable[[int], None] | None = None, progress: bool = True) -> dict:
    """Generate the missing images of the answer set into ``folder``; returns counts and seconds.

    Call ``check_answer_folder`` on the main process (it writes the manifest) before any process
    calls this. ``on_batch`` is called with the number of images written so far by this process.
    """
    folder = Path(folder)
    items = answer_grid(domain, settings.seeds, settings.photo_phrase, settings.themes, settings.objects)
    missing = [it for it in items if not (folder / it.file_name(settings.ext)).exists()]
    mine = missing[process_index::num_processes]
    t0 = time.perf_counter()
    done = 0
    bar = tqdm(total=len(mine), desc=f"answer set [{process_index}]", disable=not progress or not mine,
               mininterval=5)
    for i in range(0, len(mine), batch_size):
        chunk = mine[i:i + batch_size]
        images = generate(pipe, [it.prompt for it in chunk], [it.seed for it in chunk], steps=settings.steps,
                          guidance_scale=settings.guidance_scale, batch_size=batch_size, size=settings.size,
                          eta=settings.eta)
        for it, img in zip(chunk, images):
            _save_atomic(img, folder / it.file_name(settings.ext))
        done += len(chunk)
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(done)
    bar.close()
    return {"total": len(items), "generated": done, "reused": len(items) - len(missing),
            "generated_by_other_processes": len(missing) - len(mine), "seconds": round(time.perf_counter() - t0, 2)}


def check_answer_folder(folder: str | Path, settings: SamplerSettings, model_id: str) -> None:
    """Refuse a folder made with other settings (or holding foreign files); write the manifest."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AnswerSetError(f"answer-set path {folder} is a file, expected a folder")
    have = _check_manifest(folder, settings, model_id)
    if have is not None:  # the manifest names every image the folder was asked for, over all runs
        seeds = list(dict.fromkeys([*have.get("seeds", []), *settings.seeds]))
        settings = replace(settings, seeds=seeds, themes=_union(have.get("themes"), settings.themes),
                           objects=_union(have.get("objects"), settings.objects))
    write_manifest(folder, settings, model_id)


@dataclass
class AnswerSet:
    """An answer set on disk: paths with their theme/object label indices and seeds."""

    folder: Path
    paths: list[Path]
    themes: np.ndarray
    objects: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, size: int = 256, process_index: int = 0, num_processes: int = 1
                ) -> Iterator[tuple[slice, torch.Tensor]]:
        """(slice, float images (B, 3, H, W) in [0, 1]) chunks, so large sets never sit in memory.

        With ``num_processes`` > 1, process r reads the r-th of every ``num_processes`` chunks.
        """
        for k, i in enumerate(range(0, len(self.paths), size)):
            if k % num_processes == process_index:
                yield slice(i, i + size), load_images(self.paths[i:i + size])


def load_images(paths: Sequence[Path], size: int | None = None) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1]; resized (bicubic) to ``size`` when given or when sizes differ."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            target = size or (arrays[0].shape[0] if arrays else None)
            if target is not None and im.size != (target, target):
                im = im.resize((target, target), Image.BICUBIC)
            arrays.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def read_answer_set(folder: str | Path, domain: Domain, seeds: Sequence[int], ext: str | None = None,
                    themes: Sequence[str] | None = None, objects: Sequence[str] | None = None) -> AnswerSet:
    """The complete answer set (of the given subset) in ``folder``; an empty or incomplete folder raises
    ``AnswerSetError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnswerSetError(f"answer-set folder {folder} does not exist")
    found: dict[tuple[str, str, int], Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.name == MANIFEST:
            continue
        try:
            theme, obj, seed = parse_answer_file_name(p.name)
        except ValueError:
            continue
        if ext is not None and p.suffix.lstrip(".").lower() != ext.lower():
            continue
        found[(theme, obj, seed)] = p
    if not found:
        raise AnswerSetError(f"{folder} holds no answer-set images (<Theme>_<Object>_seed<N>.<ext>)")
    items = answer_grid(domain, seeds, themes=themes, objects=objects)
    missing = [it for it in items if (it.theme, it.obj, it.seed) not in found]
    if missing:
        m = missing[0]
        raise AnswerSetError(f"{folder} lacks {len(missing)} of {len(items)} answer-set images "
                             f"(e.g. {answer_file_name(m.theme, m.obj, m.seed, ext or '<ext>')}); "
                             f"generate them (the run resumes) or check --seeds and --domain")
    paths = [found[(it.theme, it.obj, it.seed)] for it in items]
    return AnswerSet(folder, paths, np.array([domain.themes.index(it.theme) for it in items]),
                     np.array([domain.objects.index(it.obj) for it in items]), np.array([it.seed for it in items]))
