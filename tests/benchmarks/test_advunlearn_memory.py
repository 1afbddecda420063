"""The 512 px GPU estimate of benchmarks/advunlearn_memory.py: exact static bytes plus extrapolated working memory."""

import pytest

from benchmarks.advunlearn_memory import GIB, TEXT_SD15, UNET_SD15, gpu_estimate


def _row(latent, working, checkpointing=False, precision="no"):
    return {"latent": latent, "pixels": latent * 8, "working_gib": working, "gradient_checkpointing": checkpointing,
            "mixed_precision": precision}


def test_working_memory_is_extrapolated_linearly_in_latent_area_and_halved_for_bf16():
    rows = [_row(8, 2.0), _row(16, 2.6), _row(16, 9.0, precision="bf16"), _row(8, 1.0, checkpointing=True),
            _row(16, 1.3, checkpointing=True)]
    trained = 85_056_000
    plain = gpu_estimate(rows, trained, False)
    # 2.0 + (2.6 - 2.0) / (256 - 64) * (4096 - 64) = 14.6 GiB in float32 at a 64x64 latent
    assert plain["working_fp32_at_512_gib"] == pytest.approx(14.6, abs=0.01)
    static = (859_520_964 * 2 + 2 * 123_060_480 * 4 + trained * 12 + 83_653_863 * 4) / GIB
    assert plain["total_gib"] == pytest.approx(static + 14.6 / 2, abs=0.06)
    assert gpu_estimate(rows, trained, True)["working_fp32_at_512_gib"] == pytest.approx(7.3, abs=0.01)


def test_the_shapes_are_stable_diffusion_1_5s():
    assert UNET_SD15["block_out_channels"] == (320, 640, 1280, 1280) and UNET_SD15["cross_attention_dim"] == 768
    assert (TEXT_SD15["hidden_size"], TEXT_SD15["num_hidden_layers"], TEXT_SD15["vocab_size"]) == (768, 12, 49408)
