"""The embedded base model "minicanvas-sd": tiny configs and the recipe that trains it.

The model is an ordinary diffusers ``StableDiffusionPipeline`` (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, the real CLIP tokenizer, a DDIM scheduler), only small: 32 px images, 16x16x4
latents. Every erasure method therefore runs the same code on it as on Stable Diffusion 1.x.

Recipe, in two stages that each checkpoint and resume:
1. ``vae``: train the autoencoder to reconstruct MiniCanvas images; set ``scaling_factor`` so
   that scaled latents have unit standard deviation, as SD's 0.18215 does for its VAE.
2. ``unet``: encode a fixed pool of MiniCanvas images once, then train the UNet on the
   v-prediction loss jointly with the text encoder, dropping 10% of captions for classifier-free
   guidance, with Min-SNR loss weights and an EMA copy of both that becomes the shipped weights. From step 3000 on, three quarters of each batch draw high-noise timesteps, where the
   prompt decides the picture.

The model predicts v, not epsilon, and DDIM samples it with trailing timesteps (see
``scheduler_config``); the erasure methods read ``prediction_type`` from the scheduler.

    python -m pipelines.recipes.minicanvas_sd --work runs/minicanvas-sd --out pipelines/minicanvas_sd
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from erase.data import minicanvas
from erase import checkpoint as ckpt
from pipelines.tokenizer import build_clip_tokenizer

SHIPPED_DIR = Path(__file__).parents[1] / "minicanvas_sd"


def caption(theme: str, obj: str) -> str:
    """MiniCanvas captions follow the UnlearnCanvas template; the photo domain reads 'Photo'."""
    return minicanvas.DOMAIN.prompt(theme, obj)


# --------------------------------------------------------------------------- configs
def vae_config(image_size: int = minicanvas.DEFAULT_SIZE) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=image_size,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def unet_config(latent_size: int = minicanvas.DEFAULT_SIZE // 2, cross_attention_dim: int = 64) -> dict:
    return dict(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 64),
                # No attention at 16x16: on CPU its 256-token self-attention costs more than the
                # rest of the UNet; text enters at 8x8, 4x4 and the mid block, plenty for 32 px.
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16)


def text_encoder_config(hidden_size: int = 64) -> CLIPTextConfig:
    # Full CLIP vocabulary so that the real tokenizer works; bos/eos/pad ids match it.
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def scheduler_config() -> dict:
    # The DDPM linear schedule suits 16x16 latents: at t=T almost no signal is left (SD's
    # scaled_linear schedule is tuned for 64x64 latents and leaves too much at this size).
    # Near zero terminal SNR, epsilon prediction fails where the picture is decided: at t ~ 950
    # sqrt(alpha_bar) is ~0.01, so the x0 estimate multiplies any epsilon error by ~100 (measured on
    # an epsilon model of this size: blobby, saturated samples that ignored the object word). So the
    # model predicts v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, as SD 2.x does), which
    # stays well-posed at every noise level, and DDIM starts at t = 999 ("trailing" spacing) as
    # zero-terminal-SNR models should (Lin et al. 2024).
    return dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
                prediction_type="v_prediction")


@dataclass
class RecipeConfig:
    seed: int = 0
    image_size: int = minicanvas.DEFAULT_SIZE
    data_seed: int = 1000  # MiniCanvas seed of the training images (held-out evaluation uses others)
    pool_per_cell: int = 64  # training images per (style, object)
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 8000
    unet_batch: int = 64
    unet_lr: float = 6e-4
    unet_warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    # From this step on, ``focus_fraction`` of each batch draws t from [focus_t_min, 1000): with
    # uniform t the epsilon loss is dominated by low-noise steps, where the prompt hardly matters,
    # and at step 3000 the samples followed the style only half the time and the object barely.
    focus_from_step: int = 3000
    focus_t_min: int = 400
    focus_fraction: float = 0.75
    # Min-SNR-gamma loss weights (Hang et al., ICCV 2023): each sample's v loss times
    # min(SNR, gamma) / (SNR + 1), so the many low-noise steps (texture) do not drown the
    # high-noise ones where the layout (the object) is decided. 0 turns it off (plain mean).
    snr_gamma: float = 5.0
    # Train the text encoder with the UNet (from its seeded random initialisation). Measured: kept
    # frozen at random, after 1,750 steps the samples mixed up the style words (18% style accuracy
    # against 54% when trained jointly).
    train_text_encoder: bool = True
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch default


# --------------------------------------------------------------------------- data
def training_pool(cfg: RecipeConfig) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1] (N, 3, H, W) with their captions, deterministic from ``cfg.data_seed``."""
    samples = minicanvas.grid_samples(cfg.pool_per_cell)
    images, _, _ = minicanvas.render_arrays(samples, cfg.data_seed, cfg.image_size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [caption(s.theme, s.obj) for s in samples]


# --------------------------------------------------------------------------- loop
def run_steps(name: str, work: Path, total: int, every: int, modules: dict[str, torch.nn.Module],
              optimizer: torch.optim.Optimizer, generator: torch.Generator,
              step_fn: Callable[[int], torch.Tensor], after_step: Callable[[], None] = lambda: None) -> None:
    """Run ``step_fn`` from the last checkpoint up to ``total`` steps, checkpointing as it goes."""
    folder = work / f"checkpoint-{name}"
    start = 0
    state = ckpt.load_checkpoint(folder)
    if state is not None:
        tensors, meta = state
        for key, module in modules.items():
            ckpt.load_module(module, tensors, key)
        ckpt.load_optimizer(optimizer, tensors, meta["optimizer"])
        ckpt.load_rng(tensors, generator)
        start = meta["step"]
        print(f"[{name}] resumed at step {start}", flush=True)
    bar = tqdm(range(start, total), initial=start, total=total, desc=name, mininterval=5, file=sys.stdout)
    loss_avg = None
    for step in bar:
        loss = step_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[{name}] loss became {loss.item()} at step {step}; stopping")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
        if (step + 1) % every == 0 or step + 1 == total:
            tensors = {}
            for key, module in modules.items():
                tensors.update(ckpt.module_tensors(module, key))
            opt_tensors, opt_meta = ckpt.optimizer_tensors(optimizer)
            tensors.update(opt_tensors)
            tensors.update(ckpt.rng_tensors(generator))
            ckpt.save_checkpoint(folder, tensors, {"step": step + 1, "loss_ema": loss_avg, "optimizer": opt_meta})


def train_vae(cfg: RecipeConfig, work: Path, pool: torch.Tensor) -> AutoencoderKL:
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_config(cfg.image_size))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> torch.Tensor:
        idx = torch.randint(0, len(pool), (cfg.vae_batch,), generator=gen)
        x = pool[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.vae_kl_weight * kl

    run_steps("vae", work, cfg.vae_steps, cfg.checkpoint_every, {"vae": vae}, opt, gen, step)
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(pool[i:i + 256]).latent_dist.mean for i in range(0, len(pool), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae


def encode_pool(vae: AutoencoderKL, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        posts = [vae.encode(pool[i:i + 256]).latent_dist for i in range(0, len(pool), 256)]
    return torch.cat([p.mean for p in posts]), torch.cat([p.std for p in posts])


def train_unet(cfg: RecipeConfig, work: Path, vae: AutoencoderKL, pool: torch.Tensor, captions: list[str],
               tokenizer) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(cfg.seed + 1)
    unet = UNet2DConditionModel(**unet_config(cfg.image_size // 2))
    text_encoder = CLIPTextModel(text_encoder_config())
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in scheduler_config().items()
                                       if k not in ("set_alpha_to_one", "steps_offset", "timestep_spacing")})
    text_encoder.requires_grad_(cfg.train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if cfg.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    lat_mean, lat_std = encode_pool(vae, pool)
    scale = vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    alphas = noise_scheduler.alphas_cumprod

    def step(i: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * min(1.0, (i + 1) / cfg.unet_warmup)
        idx = torch.randint(0, len(pool), (cfg.unet_batch,), generator=gen)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * scale
        tok = ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        tok[drop] = empty_ids
        steps_t = noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps_t, (cfg.unet_batch,), generator=gen)
        if i >= cfg.focus_from_step:
            high_t = torch.randint(cfg.focus_t_min, steps_t, (cfg.unet_batch,), generator=gen)
            t = torch.where(torch.rand(cfg.unet_batch, generator=gen) < cfg.focus_fraction, high_t, t)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.set_grad_enabled(cfg.train_text_encoder):
            cond = text_encoder(tok)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * z0  # v (see scheduler_config)
        if not cfg.snr_gamma:
            return F.mse_loss(pred, target)
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=cfg.snr_gamma) / (snr + 1)
        return (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()

    def update_ema() -> None:
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - cfg.ema_decay)

    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text_encoder": ema_text}
    run_steps("unet", work, cfg.unet_steps, cfg.checkpoint_every, modules, opt, gen, step, update_ema)
    return ema_unet.eval(), ema_text.eval()


def build_pipeline(vae, unet, text_encoder, tokenizer) -> StableDiffusionPipeline:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*clip_sample.*", category=FutureWarning)
        pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                       scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    # The constructor turns clip_sample off (a guard for SD 1.x configs); this model needs it on,
    # so the scheduler is registered again after construction and saved with the pipeline.
    pipe.scheduler = DDIMScheduler(**scheduler_config())
    return pipe


def train(cfg: RecipeConfig, work: Path, out: Path) -> StableDiffusionPipeline:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool, captions = training_pool(cfg)
    vae = train_vae(cfg, work, pool)
    tokenizer = build_clip_tokenizer()
    unet, text_encoder = train_unet(cfg, work, vae, pool, captions, tokenizer)
    pipe = build_pipeline(vae, unet, text_encoder, tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps(
        {"recipe": "pipelines.recipes.minicanvas_sd", "config": asdict(cfg), "train_seconds": round(time.time() - t0, 1),
         "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the embedded minicanvas-sd base model.")
    parser.add_argument("--work", default="runs/minicanvas-sd", help="checkpoints go here; rerun to resume")
    parser.add_argument("--out", default=str(SHIPPED_DIR), help="the finished pipeline folder")
    for f in RecipeConfig.__dataclass_fields__.values():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    cfg = RecipeConfig(**{k: getattr(args, k) for k in RecipeConfig.__dataclass_fields__})
    train(cfg, Path(args.work), Path(args.out))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
