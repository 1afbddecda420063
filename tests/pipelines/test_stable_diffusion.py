import json
import shutil

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from pipelines.stable_diffusion import ModelLoadError, generate, load_pipeline, resolve_model


def test_save_reload_gives_identical_images(tiny_sd_dir):
    a = generate(load_pipeline(tiny_sd_dir), ["A Fish image in Neon style."] * 2, [1, 2], steps=3)
    b = generate(load_pipeline(tiny_sd_dir), ["A Fish image in Neon style."] * 2, [1, 2], steps=3)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # bit-exact on purpose: the same weights, batch and process, loaded twice
    # different seeds, different images: far apart, not a rounding step (measured: 53 of 255 levels on average)
    assert np.abs(a[0].astype(int) - a[1].astype(int)).mean() > 10


def test_images_do_not_depend_on_batching(tiny_pipe):
    pipe = tiny_pipe
    prompts, seeds = ["A Star image in Pop style.", "A Tree image in Fire style.", "A Boat image."], [7, 8, 9]
    together = generate(pipe, prompts, seeds, steps=2, batch_size=3)
    apart = generate(pipe, prompts, seeds, steps=2, batch_size=1)
    # batched BLAS kernels may round differently from single ones: at most one grey level apart
    np.testing.assert_allclose(together.astype(int), apart.astype(int), atol=1)


def test_the_vae_decodes_a_few_images_at_a_time(tiny_pipe):
    """Decoding is the memory peak at 512 px (about 0.7 GB per image): never the whole UNet batch at once."""
    sizes = []
    hook = tiny_pipe.vae.decoder.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    try:
        prompts, seeds = ["a house"] * 10, list(range(10))
        chunked = generate(tiny_pipe, prompts, seeds, steps=2, batch_size=10, decode_batch=4)
        assert sizes == [4, 4, 2]
        whole = generate(tiny_pipe, prompts, seeds, steps=2, batch_size=10, decode_batch=10)
        assert sizes[3:] == [10]
    finally:
        hook.remove()
    # the same latents decoded in other groups: within one grey level of rounding
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="decode batch 0"):
        generate(tiny_pipe, prompts, seeds, steps=2, decode_batch=0)


def test_missing_folder_and_offline_hub_id_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="cannot load hub model 'nobody/no-such-model'"):
        load_pipeline("nobody/no-such-model")


def test_components_replace_the_base_ones_without_touching_its_folder(tiny_sd_dir):
    before = {p: p.stat().st_mtime_ns for p in tiny_sd_dir.rglob("*")}
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe = load_pipeline(tiny_sd_dir, unet=base.unet)
    assert pipe.unet is base.unet
    assert before == {p: p.stat().st_mtime_ns for p in tiny_sd_dir.rglob("*")}


def test_embedded_model_loads_and_draws_deterministically(embedded_pipe):
    a = generate(embedded_pipe, ["A Fish image in Neon style."], [188], steps=4)
    b = generate(load_pipeline(), ["A Fish image in Neon style."], [188], steps=4)
    assert a.shape == (1, 32, 32, 3)
    assert np.array_equal(a, b)  # bit-exact on purpose: the same weights and batch in one process


def test_quiet_loading_silences_the_libraries_bars_and_restores_their_settings(tiny_sd_dir, capsys):
    load_pipeline(tiny_sd_dir, progress=False)
    assert "Loading" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    load_pipeline(tiny_sd_dir)  # the same load with the bars the libraries show by default
    assert "Loading pipeline components" in capsys.readouterr().err


def test_folders_with_equal_tokenizer_files_share_one_tokenizer_and_another_vocabulary_gets_its_own(
        tiny_sd_dir, tmp_path):
    """Tokenizers are keyed by their files' content, not the folder: a copy shares the parsed one."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd_dir, copy)
    assert load_pipeline(copy).tokenizer is load_pipeline(tiny_sd_dir).tokenizer
    changed = tmp_path / "changed"
    shutil.copytree(tiny_sd_dir, changed)
    config = changed / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 76}))
    other = load_pipeline(changed).tokenizer
    assert other is not load_pipeline(tiny_sd_dir).tokenizer and other.model_max_length == 76
