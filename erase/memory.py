"""Batch sizes chosen from the device's free memory, by a small model of what a run holds.

Why: at Stable Diffusion 1.5 and 512 px the defaults of the papers (SalUn's batch of 8 forget + 8 retain
images, the evaluation's 64 images per generate call) need more than a 24 GB GPU holds, while on an 80 GB
GPU they fit as they are. The model: peak = fixed bytes (weights, frozen copies, gradients, Adam moments,
masks: exact counts, numel x bytes) + batch x per-image bytes of the phase that dominates.

The per-image bytes are measured on the CPU at SD 1.5 shape in float32 by ``benchmarks/memory_sd15.py``
(``benchmarks/results/memory_sd15.json``, ``per_image``; a test checks these constants equal that file's).
On a GPU they are estimates: the same tensors are assumed to live there, halved under bf16/fp16 autocast
(activations in half precision), plus a stated headroom for the caching allocator and library workspaces.
For an SD-1.x-shaped model at another resolution the figures are scaled by latent area (a scaling, not a
measurement); for any other model the caller's default is kept and the plan says why.

A plan never changes what a run computes: the evaluation's images do not depend on the batch
(``pipelines.stable_diffusion.generate`` seeds each image), and a method's semantic batch is kept by
splitting it into micro-batches with the trainer's ``grad_accum`` (mean of equal-sized micro-batch means =
the batch mean). An explicit batch size (``--batch-size``, ``batch_size=``, ``--grad-accum``) always wins;
on the CPU (no free-memory reading) the defaults are kept, so CPU results are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

GIB = 2**30
MAX_BATCH = 4096  # a larger batch is a typo, not a plan
# bytes per image (per UNet sample for unet_*) at 512 px (latent 64x64), float32, measured on the CPU
# (benchmarks/results/memory_sd15.json "per_image"; tests/erase/test_memory.py checks they agree)
SD15_PER_IMAGE: dict[str, int] = {"encode": 671_252_480, "decode": 598_982_656, "unet_infer": 117_391_360,
                                  "unet_train/full": 411_783_168, "unet_train/attn2": 1_499_213_824}
SD15_LATENT_AREA = 64 * 64
SD1_UNET = {"block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "in_channels": 4}
# assumptions of the GPU model (estimates, not measurements)
HALF_ACTIVATION_FACTOR = 0.5  # bf16/fp16 autocast keeps activations in 2 bytes instead of 4
HEADROOM_FRACTION = 0.08  # of free memory, left to the caching allocator's fragmentation and cuBLAS/cuDNN workspaces
HEADROOM_MIN_BYTES = GIB // 2
CUDA_CONTEXT_BYTES = GIB // 2  # what the CUDA context takes before mem_get_info is read (tables only)


def gpu_assumptions() -> dict[str, Any]:
    """The GPU model's stated assumptions, for the JSON that reports its figures."""
    return {"activations_under_bf16_or_fp16": f"x{HALF_ACTIVATION_FACTOR} of the float32 figure (estimate)",
            "headroom": f"max({HEADROOM_FRACTION:.0%} of free memory, {HEADROOM_MIN_BYTES / GIB:g} GiB) left unused "
                        "for allocator fragmentation and library workspaces (estimate)",
            "cuda_context_bytes": CUDA_CONTEXT_BYTES,
            "cuda_context": "assumed taken before free memory is read; a table's 'N GB GPU' has N GiB minus it free",
            "weights_gradients_optimizer": "exact: numel x bytes (weights and Adam moments float32 under autocast)",
            "other_resolutions": "per-image bytes scaled by latent area (a scaling, not a measurement)",
            "cpu_to_gpu": "the tensors measured on the CPU (PyTorch SDPA attention, no materialised attention "
                          "matrix) are assumed to be what the GPU holds"}


@dataclass(frozen=True)
class MemoryProfile:
    """What one batch item of a method costs and what the method holds besides the pipeline's weights.

    ``train_samples``: UNet samples run with gradients per batch item (SalUn: forget + retain = 2);
    ``infer_samples``: UNet samples run without gradients at once per batch item (CFG sampling: 2).
    """

    train_phase: str  # key of SD15_PER_IMAGE: unet_train/full or unet_train/attn2
    train_samples: int
    infer_samples: int
    trained_parameters: int
    extra_fixed_bytes: int  # frozen copies, masks ... allocated after the plan is made
    setup: tuple[tuple[str, int], ...] = ()  # (phase, images) the setup runs in float32 before training holds anything
    batch_option: str = "batch_size"

    def fixed_bytes(self) -> int:
        """Bytes the run adds to the loaded pipeline: gradients + Adam moments (float32) + the extras."""
        return self.trained_parameters * 12 + self.extra_fixed_bytes


@dataclass
class BatchPlan:
    """The batch a run uses and why; ``to_json`` goes to erase.json (``cost.batch``) or results.json."""

    batch: int  # images per call (evaluation) or the micro-batch (methods)
    grad_accum: int  # micro-steps per optimizer step (1 for the evaluation)
    chosen_by: str  # "explicit", "default" or "free memory"
    reason: str
    free_bytes: int | None = None
    estimated_peak_bytes: int | None = None  # above what the device held when free memory was read

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_batch(value: int, name: str = "batch size") -> int:
    """``value`` when it is a sane batch size, else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise ValueError(f"{name} must be an integer between 1 and {MAX_BATCH}, got {value!r}")
    return value


def free_device_bytes(device: torch.device | str) -> int | None:
    """Free bytes of a CUDA device (``torch.cuda.mem_get_info``); None elsewhere (the CPU keeps its defaults)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def usable_bytes(free: int) -> int:
    """Free bytes minus the headroom the model keeps (never negative)."""
    return max(0, free - max(int(free * HEADROOM_FRACTION), HEADROOM_MIN_BYTES))


def sd1_shaped(unet_config: Mapping[str, Any]) -> bool:
    """Whether a UNet has SD 1.x's channels, so the SD 1.5 figures apply (scaled by latent area)."""
    return all(tuple(v) == tuple(unet_config.get(k) or ()) if isinstance(v, tuple) else unet_config.get(k) == v
               for k, v in SD1_UNET.items())


def per_image_bytes(phase: str, latent_size: int, precision: str = "no") -> int:
    """Per-image bytes of ``phase`` at a square latent of ``latent_size`` (64 at 512 px), scaled by area."""
    if phase.startswith("unet_train/"):
        # The saved activations do not depend on which weights train, but the full UNet's peak comes while its
        # 3.4 GB of weight gradients are written and activations already freed, so its batch-1 slope (0.41 GB)
        # hides them; the cross-attention run peaks at the end of the forward pass: 1.5 GB per image, the
        # activations themselves. Every trained set uses the larger figure (an upper bound for batch 1 of full).
        factor = HALF_ACTIVATION_FACTOR if precision in ("bf16", "fp16", "bfloat16", "float16") else 1.0
        worst = max(v for k, v in SD15_PER_IMAGE.items() if k.startswith("unet_train/"))
        return int(worst * latent_size ** 2 / SD15_LATENT_AREA * factor)
    factor = HALF_ACTIVATION_FACTOR if precision in ("bf16", "fp16", "bfloat16", "float16") else 1.0
    return int(SD15_PER_IMAGE[phase] * latent_size ** 2 / SD15_LATENT_AREA * factor)


def largest_fitting(budget: int, per_item: int, limit: int, candidates: list[int] | None = None) -> int | None:
    """The largest batch in ``candidates`` (default 1..limit) with batch x per_item <= budget; None if none."""
    options = candidates if candidates is not None else list(range(1, limit + 1))
    fitting = [b for b in options if b <= limit and b * per_item <= budget]
    return max(fitting) if fitting else None


def _keep_default(batch: int, free: int | None, unet_config: Mapping[str, Any]) -> BatchPlan | None:
    """The default batch where the model cannot plan: no free-memory reading (CPU), or a UNet the SD 1.5
    figures do not describe; None where it can."""
    if free is None:
        return BatchPlan(batch, 1, "default", "no free-memory reading on this device (CPU): the default")
    if not sd1_shaped(unet_config):
        return BatchPlan(batch, 1, "default", "the UNet is not SD-1.x-shaped; the memory figures are SD 1.5's, "
                         "so the default is kept", free)
    return None


def eval_peak_bytes(batch: int, latent_size: int, precision: str, decode_batch: int) -> int:
    """Working bytes of one generate call: the CFG UNet (2 samples per image) or the VAE decode, whichever is more."""
    unet = 2 * batch * per_image_bytes("unet_infer", latent_size, precision)
    return max(unet, min(batch, decode_batch) * per_image_bytes("decode", latent_size, precision))


def plan_eval_batch(default: int, explicit: int | None, free: int | None, unet_config: Mapping[str, Any],
                    latent_size: int, precision: str = "no", decode_batch: int = 8) -> BatchPlan:
    """Images per generate call: ``explicit`` if given, the default on the CPU or an unknown model, else the
    largest batch up to the default whose estimated working memory fits the free memory (read after the
    model and judges were loaded, so their weights are already excluded)."""
    if explicit is not None:
        return BatchPlan(check_batch(explicit, "--batch-size"), 1, "explicit", "--batch-size given")
    kept = _keep_default(default, free, unet_config)
    if kept is not None:
        return kept
    budget = usable_bytes(free)
    chosen = largest_fitting(budget, 2 * per_image_bytes("unet_infer", latent_size, precision), default) or 1
    peak = eval_peak_bytes(chosen, latent_size, precision, decode_batch)
    why = (f"largest batch <= {default} whose estimate fits {budget / GIB:.1f} GiB usable of {free / GIB:.1f} GiB "
           f"free (latent {latent_size}x{latent_size}, {precision})")
    if peak > budget:
        why += f"; even so the estimate {peak / GIB:.1f} GiB exceeds it: expect out-of-memory"
    return BatchPlan(chosen, 1, "free memory", why, free, peak)


def method_peak_bytes(profile: MemoryProfile, micro: int, latent_size: int, precision: str) -> int:
    """Bytes a method adds to the loaded pipeline at its peak with a micro-batch of ``micro`` items."""
    train = micro * profile.train_samples * per_image_bytes(profile.train_phase, latent_size, precision)
    infer = micro * profile.infer_samples * per_image_bytes("unet_infer", latent_size, precision)
    setup = max((n * per_image_bytes(phase, latent_size) for phase, n in profile.setup), default=0)
    return max(profile.fixed_bytes() + max(train, infer), setup)


def plan_method_batch(profile: MemoryProfile | None, batch: int, explicit: bool, free: int | None,
                      unet_config: Mapping[str, Any], latent_size: int, precision: str = "no") -> BatchPlan:
    """Micro-batch and ``grad_accum`` for a method's semantic ``batch``: the largest divisor of ``batch`` whose
    estimated peak fits, so micro x grad_accum = batch (the method's effective batch never changes)."""
    if explicit:
        return BatchPlan(batch, 1, "explicit", "batch size or --grad-accum given")
    if profile is None:
        return BatchPlan(batch, 1, "default", "the method keeps its own batch (no memory profile)")
    kept = _keep_default(batch, free, unet_config)
    if kept is not None:
        return kept
    budget = usable_bytes(free)
    divisors = [d for d in range(1, batch + 1) if batch % d == 0]
    fits = [d for d in divisors if method_peak_bytes(profile, d, latent_size, precision) <= budget]
    micro = max(fits) if fits else 1
    peak = method_peak_bytes(profile, micro, latent_size, precision)
    why = (f"largest divisor of batch {batch} whose estimate fits {budget / GIB:.1f} GiB usable of "
           f"{free / GIB:.1f} GiB free (latent {latent_size}x{latent_size}, {precision}); "
           f"{micro} x {batch // micro} micro-steps")
    if not fits:
        why += f"; even micro-batch 1 needs {peak / GIB:.1f} GiB: expect out-of-memory (try --mixed-precision bf16)"
    return BatchPlan(micro, batch // micro, "free memory", why, free, peak)
