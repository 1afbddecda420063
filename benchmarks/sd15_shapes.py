"""Stable Diffusion 1.5's component shapes, built from configs with random weights (memory does not depend on
the values), shared by the memory scripts (``advunlearn_memory``, ``memory_sd15``) so both measure one model.

Parameter counts of the built components: UNet 859,520,964, VAE 83,653,863, CLIP text encoder 123,060,480
(the figures of ``stable-diffusion-v1-5``; ``tests/benchmarks/test_sd15_shapes.py`` checks the configs).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

UNET_SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
VAE_SD15 = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
TEXT_SD15 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=768)
UNET_PARAMETERS, VAE_PARAMETERS, TEXT_PARAMETERS = 859_520_964, 83_653_863, 123_060_480


def build_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_SD15)


def build_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_SD15)


def build_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TEXT_SD15))
