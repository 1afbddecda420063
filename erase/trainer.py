"""The one training loop every method runs in: accelerate, checkpoints, resume, NaN stop, time and memory.

It knows nothing about diffusion: it moves named ``nn.Parameter`` s with an optimizer, given a
loss closure ``loss_fn(step, generator)``. Every (micro-)step draws its randomness from its own
generator seeded by (seed, step, micro-step, process), so a run resumed from a checkpoint takes
exactly the same steps as an uninterrupted one, and two processes of ``accelerate launch`` draw
different batches whose gradients are averaged.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from erase import checkpoint as ckpt

CHECKPOINT = "checkpoint"


class TrainingError(RuntimeError):
    """Training cannot start or go on (e.g. a checkpoint from another run); the message is one line."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; training stopped before the bad step touched the weights."""


@dataclass
class TrainerConfig:
    steps: int = 100
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    grad_accum: int = 1  # micro-steps per optimizer step
    checkpoint_every: int = 50  # optimizer steps between checkpoints; 0: never
    max_grad_norm: float = 0.0  # 0: no clipping (ESD and SalUn do not clip)
    progress: bool = True
    cpu: bool = False


@dataclass
class TrainResult:
    steps: int
    seconds: float  # wall time of the optimisation, summed over resumed segments
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "process_max_rss"
    final_loss: float
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)


def step_generator(seed: int, step: int, micro: int = 0, process: int = 0) -> torch.Generator:
    """The CPU generator of one micro-step: a pure function of its coordinates."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + micro) * 4096 + process)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def make_accelerator(config: TrainerConfig):
    """An ``accelerate.Accelerator`` for this run (one process, or several under ``accelerate launch``)."""
    from accelerate import Accelerator

    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise TrainingError(f"mixed_precision must be no, fp16 or bf16, got {config.mixed_precision!r}")
    try:
        return Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    except ValueError as err:
        # accelerate keeps its precision/device choice in a process-wide singleton; a second run
        # in the same process (benchmarks, tests) with other settings must start it afresh.
        if "already been initialized" not in str(err):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)


def train(params: dict[str, nn.Parameter], loss_fn: Callable[[int, torch.Generator], torch.Tensor],
          optimizer: torch.optim.Optimizer, config: TrainerConfig, work_dir: str | Path | None = None,
          resume: bool = False, after_backward: Callable[[], None] | None = None,
          fingerprint: dict | None = None, accelerator=None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run ``config.steps`` optimizer steps of ``loss_fn`` on ``params``.

    ``work_dir`` holds the periodic checkpoint; with ``resume`` the run continues from it, and
    ``fingerprint`` (method, concept, config ...) must equal the one it was written with.
    ``after_backward`` sees complete gradients before each optimizer step (SalUn masks them there).
    """
    if config.steps < 0 or config.grad_accum < 1:
        raise TrainingError("steps must be >= 0 and grad_accum >= 1")
    accelerator = accelerator or make_accelerator(config)
    opt = accelerator.prepare(optimizer)
    raw_opt = getattr(opt, "optimizer", opt)
    names = list(params)
    folder = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    start, elapsed, losses = 0, 0.0, []
    if folder is not None:
        state = ckpt.load_checkpoint(folder)
        if state is not None and not resume:
            raise TrainingError(f"{folder} holds a checkpoint of an interrupted run; pass --resume to continue "
                                f"it or --overwrite to start over")
        if state is not None:
            tensors, meta = state
            if fingerprint is not None and meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
                raise TrainingError(f"the checkpoint in {folder} belongs to a different run (method, concept, "
                                    f"model or options differ); use --overwrite to start over")
            missing = [n for n in names if f"param.{n}" not in tensors]
            if missing:
                raise TrainingError(f"checkpoint in {folder} lacks {len(missing)} parameter(s), e.g. {missing[0]}")
            with torch.no_grad():
                for n in names:
                    params[n].copy_(tensors[f"param.{n}"])
            ckpt.load_optimizer(raw_opt, tensors, meta["optimizer"])
            start, elapsed, losses = meta["step"], meta["seconds"], meta.get("losses", [])
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="erase", mininterval=2,
               file=sys.stderr, disable=not (config.progress and accelerator.is_main_process))
    t0 = time.perf_counter()
    loss_value = float("nan") if not losses else losses[-1]
    for step in bar:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(config.grad_accum):
            gen = step_generator(config.seed, step, micro, accelerator.process_index)
            with accelerator.autocast():
                loss = loss_fn(step, gen)
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(f"loss became {loss.item()} at step {step}; stopping (last checkpoint in "
                                    f"{folder}); try a lower lr or mixed_precision=no")
            accelerator.backward(loss / config.grad_accum)
            total += float(loss.detach()) / config.grad_accum
        if accelerator.num_processes > 1:
            for p in params.values():
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        if after_backward is not None:
            after_backward()
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(params.values()), config.max_grad_norm)
        opt.step()
        loss_value = total
        losses.append(round(total, 6))
        bar.set_postfix(loss=f"{total:.4f}", refresh=False)
        if on_step is not None:
            on_step(step, total)
        done = step + 1
        if folder is not None and accelerator.is_main_process and config.checkpoint_every > 0 and \
                done % config.checkpoint_every == 0 and done < config.steps:
            tensors = {f"param.{n}": p.detach() for n, p in params.items()}
            opt_tensors, opt_meta = ckpt.optimizer_tensors(raw_opt)
            tensors.update(opt_tensors)
            ckpt.save_checkpoint(folder, tensors, {"step": done, "seconds": elapsed + time.perf_counter() - t0,
                                                   "losses": losses, "optimizer": opt_meta,
                                                   "fingerprint": fingerprint})
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    peak, kind = _peak_memory(device)
    return TrainResult(config.steps, round(seconds, 3), peak, kind, loss_value, start, losses)


def run_method(method, config: TrainerConfig, work_dir: str | Path | None = None, resume: bool = False,
               fingerprint: dict | None = None, accelerator=None,
               after_setup: Callable[[], None] | None = None) -> TrainResult:
    """Set a method up (seeded) and train its parameters; the method's own setup time is counted too."""
    t0 = time.perf_counter()
    accelerator = accelerator or make_accelerator(config)
    torch.manual_seed(config.seed)
    method.setup(torch.Generator().manual_seed(config.seed))
    setup_seconds = time.perf_counter() - t0
    if after_setup is not None:  # e.g. hash the base weights (not timed)
        after_setup()
    params = method.trainable_parameters()
    optimizer = method.make_optimizer(list(params.values()))
    fp = dict(fingerprint or {}, trainer={k: v for k, v in asdict(config).items() if k != "progress"})
    result = train(params, method.loss, optimizer, config, work_dir, resume, method.after_backward, fp, accelerator)
    result.seconds = round(result.seconds + setup_seconds, 3)
    return result
