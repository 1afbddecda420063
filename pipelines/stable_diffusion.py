"""Load a Stable Diffusion 1.x pipeline (hub id, local folder or the embedded model) and sample it.

Generation gives every image its own generator seeded with that image's seed, so an image
depends only on (model, prompt, seed, sampler settings), never on batch size or on which
process of an ``accelerate launch`` produced it: shards of an answer set can be generated
anywhere and resumed at any point.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import utils as hub_utils
from transformers import CLIPTokenizer
from transformers.utils import logging as transformers_logging

EMBEDDED_MODEL_DIR = Path(__file__).parent / "minicanvas_sd"
EMBEDDED_MODEL_NAME = "minicanvas-sd"


class ModelLoadError(ValueError):
    """The base model cannot be found or read; the message is one line meant for the user."""


def _looks_like_hub_id(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and "\\" not in name


def resolve_model(model: str | os.PathLike | None) -> str:
    """The folder or hub id to load: ``None`` or ``minicanvas-sd`` mean the embedded model."""
    if model is None or str(model) == EMBEDDED_MODEL_NAME:
        if not (EMBEDDED_MODEL_DIR / "model_index.json").is_file():
            raise ModelLoadError(f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; reinstall the package")
        return str(EMBEDDED_MODEL_DIR)
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {path} is a file, not a diffusers pipeline folder")
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path)
    if not _looks_like_hub_id(name):
        raise ModelLoadError(f"model folder {path} does not exist")
    return name  # a hub id such as "runwayml/stable-diffusion-v1-5"


def _saved_scheduler_config(source: str, pipe: StableDiffusionPipeline) -> dict:
    """The scheduler config as saved with the model.

    ``StableDiffusionPipeline.__init__`` turns ``clip_sample`` off with a deprecation warning;
    the embedded model needs it on (see ``pipelines.recipes.minicanvas_sd.scheduler_config``), so the
    saved config is read again and the scheduler rebuilt from it.
    """
    try:
        return DDIMScheduler.load_config(source, subfolder="scheduler")
    except (OSError, ValueError):  # e.g. a hub model whose config is not cached separately
        return dict(pipe.scheduler.config)


_TOKENIZERS: dict[str, CLIPTokenizer] = {}  # sha256 of a tokenizer folder's files -> the tokenizer parsed from them


def _folder_tokenizer(folder: Path, files: Sequence[Path]) -> CLIPTokenizer | None:
    """The CLIP tokenizer of a local pipeline folder, parsed once per process for each distinct set of files.

    A tokenizer is never changed after loading, so pipelines may share one, and parsing the 49,408-token
    vocabulary costs 0.3-0.7 s per load; a base model, its copies and the models saved from it all carry
    the same files, so the key is their content, not the folder.
    """
    index = json.loads((folder / "model_index.json").read_text())
    if list(index.get("tokenizer") or []) != ["transformers", "CLIPTokenizer"]:
        return None  # another tokenizer class: diffusers loads it as usual
    digest = hashlib.sha256()
    for f in (f for f in files if f.is_file()):
        digest.update(f"{f.name}:{f.stat().st_size};".encode())
        digest.update(f.read_bytes())
    key = digest.hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return _TOKENIZERS[key]


@contextmanager
def loading_progress(enabled: bool) -> Iterator[None]:
    """The loading bars of diffusers ("Loading pipeline components"), transformers ("Loading weights") and
    huggingface_hub (downloads) off for a block when ``enabled`` is false, through their public switches;
    each library's previous setting is restored afterwards.
    """
    if enabled:
        yield
        return
    was = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
           not hub_utils.are_progress_bars_disabled())
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        for on, enable in zip(was, (diffusers_logging.enable_progress_bar, transformers_logging.enable_progress_bar,
                                    hub_utils.enable_progress_bars)):
            if on:
                enable()


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32, progress: bool = True, **components) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` with a DDIM scheduler, sampling bars off, safety checker off.

    ``progress=False`` also silences the libraries' loading bars (``loading_progress``), for ``--quiet``
    runs. ``components`` (e.g. ``unet=...``, ``text_encoder=...``) replace the base model's own, which
    is how an erased artifact is applied without touching the base model's files.
    """
    source = resolve_model(model)
    files = sorted((Path(source) / "tokenizer").glob("*")) if Path(source).is_dir() else []
    if "tokenizer" not in components and files:
        tokenizer = _folder_tokenizer(Path(source).absolute(), files)
        if tokenizer is not None:
            components["tokenizer"] = tokenizer
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the hub-unreachable warning would repeat our one-line error
    try:
        with warnings.catch_warnings(), loading_progress(progress):  # the clip_sample notice: config restored below
            warnings.filterwarnings("ignore", message=".*clip_sample.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None,
                                                           requires_safety_checker=False, **components)
    except (OSError, ValueError, EnvironmentError) as err:
        if Path(source).is_dir():
            raise ModelLoadError(f"cannot load the pipeline in {source}: {str(err).splitlines()[0]}") from err
        reason = "offline and not in the local cache" if offline else str(err).splitlines()[0]
        raise ModelLoadError(f"cannot load hub model {source!r}: {reason}") from err
    except Exception as err:  # huggingface_hub raises its own types for unreachable hubs
        raise ModelLoadError(f"cannot load model {source!r}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.scheduler = DDIMScheduler.from_config(_saved_scheduler_config(source, pipe))
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


DECODE_BATCH = 8  # images per VAE decode call in ``generate``


@torch.no_grad()
def generate(pipe: StableDiffusionPipeline, prompts: Sequence[str] | None, seeds: Sequence[int], steps: int = 50,
             guidance_scale: float = 7.5, batch_size: int = 16, size: int | None = None,
             negative_prompt: str = "", eta: float = 0.0, prompt_embeds: torch.Tensor | None = None,
             decode_batch: int = DECODE_BATCH) -> np.ndarray:
    """Images (N, H, W, 3) uint8, image i drawn from ``prompts[i]`` with a generator seeded ``seeds[i]``.

    ``prompt_embeds`` (N, 77, D) replaces ``prompts`` (e.g. token ids an attack chose, encoded without
    re-tokenising); the negative prompt is still encoded by the pipeline's own text encoder. The UNet
    runs ``batch_size`` images at a time, the VAE decodes ``decode_batch`` at a time: at 512 px decoding
    takes about 0.7 GB per image in float32, so a batch of 64 decoded at once would need about 46 GB.
    """
    count = len(prompt_embeds) if prompt_embeds is not None else len(prompts or [])
    if count != len(seeds):
        raise ValueError(f"{count} prompts but {len(seeds)} seeds")
    if steps < 1 or steps > 1000:
        raise ValueError(f"steps must be between 1 and 1000, got {steps}")
    if batch_size < 1 or decode_batch < 1:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and decode batch {decode_batch}")
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    out = []
    for i in range(0, count, batch_size):
        n = min(batch_size, count - i)
        text = {"prompt_embeds": prompt_embeds[i:i + n].to(pipe.device, pipe.unet.dtype)} \
            if prompt_embeds is not None else {"prompt": list(prompts[i:i + n])}
        generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[i:i + n]]
        latents = pipe(**text, negative_prompt=[negative_prompt] * n, num_inference_steps=steps,
                       guidance_scale=guidance_scale, generator=generators, height=size, width=size, eta=eta,
                       output_type="latent").images
        for chunk in latents.split(decode_batch):  # as the pipeline decodes, a few images at a time
            decoded = pipe.vae.decode(chunk / pipe.vae.config.scaling_factor, return_dict=False)[0]
            images = pipe.image_processor.postprocess(decoded, output_type="np", do_denormalize=[True] * len(chunk))
            out.append((np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
