"""Shared fixtures: offline environment, one session-scoped tiny Stable Diffusion pipeline built from configs.

Building or loading a pipeline costs about a second, so each is built once per session:
``tiny_pipe`` (random tiny SD 1.x components), ``tiny_sd_dir`` (the same saved as a user's model
folder, read-only by convention) and ``embedded_pipe`` (the shipped minicanvas-sd). A test that
changes a pipeline's weights takes ``fresh_tiny_pipe`` / ``fresh_embedded_pipe``, deep copies.
``minicanvas_judges`` (the embedded world's judges) and ``tiny_eval`` (one evaluation of the tiny
pipeline) serve the benchmark and app tests; tests read them and never write into their folders.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# base-model baselines of the evaluations are cached under $ERASE_CACHE: a fresh folder per session, never the
# user's ~/.cache (a test that checks the cache passes its own folder)
os.environ["ERASE_CACHE"] = tempfile.mkdtemp(prefix="erase-tests-cache-")

import pytest
import torch
from PIL import Image
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.unlearncanvas.evaluate import EvalConfig, Results, evaluate
from benchmarks.unlearncanvas.judges import load_judges
from erase.concepts import UNLEARNCANVAS
from pipelines.stable_diffusion import load_pipeline
from pipelines.tokenizer import build_clip_tokenizer


def pytest_configure(config: pytest.Config) -> None:
    # One torch thread, the library's own default for models this small (README "Threads"): as fast as two on
    # idle cores for these tiny networks, and several times faster when other jobs share the cores (an OpenMP
    # team of two waits at every op for a member the scheduler has put aside). Tests of thread counts set theirs.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """A command called in-process must give the caller its thread count back (``restore_threads``): a test that
    leaves two threads behind fails here, before every later test runs on them (on shared cores, many times
    slower: a figure script's leak once made the whole suite take 649 s instead of about 220 s beside two other
    jobs)."""
    yield
    left = torch.get_num_threads()
    if left != 1:
        torch.set_num_threads(1)
        pytest.fail(f"the test left torch on {left} threads (the suite runs on 1)")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Every module is imported now: move the objects of torch, transformers and diffusers (hundreds of thousands)
    # out of the collector's reach, so that each automatic collection during the run, and pytest's collections
    # at exit, walk only what the tests allocate.
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def clip_tokenizer():
    return build_clip_tokenizer()


def tiny_sd_components(tokenizer, seed: int = 0) -> dict:
    """A Stable Diffusion 1.x-shaped pipeline at toy size (random weights), as diffusers' tests build it."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def copy_pipe(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A pipeline with its own copy of every component but the tokenizer, which is never changed and
    whose vocabulary tables make up most of the cost of a full deep copy."""
    parts = {name: (part if name == "tokenizer" else copy.deepcopy(part)) for name, part in pipe.components.items()}
    new = StableDiffusionPipeline(**parts)
    new.scheduler = parts["scheduler"]  # the constructor may rewrite clip_sample; keep the original's
    new.set_progress_bar_config(disable=True)
    return new


@pytest.fixture(scope="session")
def tiny_pipe(clip_tokenizer) -> StableDiffusionPipeline:
    """The session's tiny SD 1.x pipeline; do not change its weights (take ``fresh_tiny_pipe``)."""
    pipe = StableDiffusionPipeline(**tiny_sd_components(clip_tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_tiny_pipe(tiny_pipe) -> StableDiffusionPipeline:
    return copy_pipe(tiny_pipe)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved to a local folder, the way a user's model folder looks; never written to."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embedded_pipe() -> StableDiffusionPipeline:
    """The shipped minicanvas-sd; do not change its weights (take ``fresh_embedded_pipe``)."""
    return load_pipeline()


@pytest.fixture
def fresh_embedded_pipe(embedded_pipe) -> StableDiffusionPipeline:
    return copy_pipe(embedded_pipe)


UNUSED_STYLE = "Pointillism"  # the Drive copy of UnlearnCanvas holds styles the benchmark does not use


@pytest.fixture(scope="session")
def fake_unlearncanvas(tmp_path_factory) -> Path:
    """``<root>/<Style>/<Object>/<1..5>.png`` for every UnlearnCanvas style (and one unused) and object.

    Image i of every cell is one 4x4 PNG (red = 40 i), hard-linked into place: what is tested is names
    and counts, and linking 5355 names is 6x faster than writing 5355 files.
    """
    base = tmp_path_factory.mktemp("datasets")
    sources = {}
    for i in range(1, 6):
        sources[i] = base / f"image{i}.png"
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(sources[i])
    root = base / "unlearn_canvas"
    for theme in UNLEARNCANVAS.themes + (UNUSED_STYLE,):
        for obj in UNLEARNCANVAS.objects:
            folder = root / theme / obj
            folder.mkdir(parents=True)
            for i, source in sources.items():
                os.link(source, folder / f"{i}.png")
    return root


# --------------------------------------------------------------------------- evaluations (benchmarks and app tests)
@pytest.fixture(scope="session")
def minicanvas_judges():
    """The embedded world's judges (shipped classifier and CLIP, rendered reference set), loaded once."""
    return load_judges(EvalConfig(device="cpu"))


class TinyEval(NamedTuple):
    results: Results
    out: Path
    config: EvalConfig

    def rerun_config(self, out: Path) -> EvalConfig:
        """The same settings, reports to ``out``, the same answer set (resumed, not drawn again)."""
        return dataclasses.replace(self.config, out=out, answer_dir=self.out / "answer_set")


@pytest.fixture(scope="session")
def tiny_eval(tiny_pipe, minicanvas_judges, tmp_path_factory) -> TinyEval:
    """evaluate() on the tiny pipeline: one seed (110 images), 2 DDIM steps, a style and an object target."""
    out = tmp_path_factory.mktemp("uc-eval") / "base"
    config = EvalConfig(targets=["Fire", "fish"], seeds=[188], steps=2, guidance=3.0, out=out, device="cpu",
                        progress=False)  # the object spelled as a user might
    return TinyEval(evaluate(tiny_pipe, config, judges=minicanvas_judges), out, config)

