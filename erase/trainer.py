"""The one training loop every method runs in: accelerate, checkpoints, resume, NaN stop, time and memory.

It knows nothing about diffusion. For a ``GradientMethod`` it takes each step itself (autocast,
micro-steps, backward, reduction, clipping, optimizer step); a ``SteppingMethod`` runs its own
step through a ``StepContext``; a ``ClosedFormMethod`` is applied once, with no loop at all.
Every (micro-)step draws its randomness from its own generator seeded by (seed, step,
micro-step, process), and checkpoints hold the weights, the optimizer and the method's carried
state, so a run resumed from a checkpoint takes exactly the same steps as an uninterrupted one,
and two processes of ``accelerate launch`` draw different batches whose gradients are averaged.
Time and peak memory cover the whole run, the method's setup (data generation, masks) included.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from erase import checkpoint as ckpt
from erase.methods.base import ClosedFormMethod, GradientMethod, Method, SteppingMethod

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
    grad_accum: int = 1  # micro-steps per optimizer step (gradient methods)
    checkpoint_every: int = 50  # optimizer steps between checkpoints; 0: never
    max_grad_norm: float = 0.0  # 0: no clipping (ESD and SalUn do not clip)
    progress: bool = True
    cpu: bool = False


@dataclass
class TrainResult:
    kind: str  # the method kind: gradient, step or closed-form
    steps: int
    seconds: float  # wall time of setup + optimisation, summed over resumed segments
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "process_max_rss"
    final_loss: float | None
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)


MAX_SEED = 2**63 - 1


def step_generator(seed: int, step: int, micro: int = 0, process: int = 0) -> torch.Generator:
    """The CPU generator of one micro-step: a pure function of its coordinates (any seed up to ``MAX_SEED``).

    torch's CPU generator (mt19937) keeps only the low 32 bits of its seed, so the coordinates are
    hashed into 32 bits: an arithmetic packing would make seed 1's steps replay seed 0's noise.
    """
    key = hashlib.blake2b(f"{seed}/{step}/{micro}/{process}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little"))


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def make_accelerator(config: TrainerConfig):
    """An ``accelerate.Accelerator`` for this run (one process, or several under ``accelerate launch``)."""
    from accelerate import Accelerator  # heavy; loaded when a run starts, not when the CLI parses
    from accelerate.state import AcceleratorState

    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise TrainingError(f"mixed_precision must be no, fp16 or bf16, got {config.mixed_precision!r}")
    # accelerate keeps its precision/device choice in a process-wide singleton; a second run in the
    # same process (benchmarks, tests) with other settings must start it afresh.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)


def autocast_precision(accelerator) -> str:
    """What ``accelerator.autocast()`` really does on its device: ``fp16``, ``bf16`` or ``no`` (float32).

    Asked of torch inside the context rather than read from the request: accelerate accepts
    ``mixed_precision="fp16"`` on a CPU but autocasts nothing there, so such a run trains in float32.
    """
    device_type = accelerator.device.type
    with accelerator.autocast():
        if not torch.is_autocast_enabled(device_type):
            return "no"
        dtype = torch.get_autocast_dtype(device_type)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


@dataclass
class StepContext:
    """What a ``SteppingMethod`` gets for one step: its generator, autocast, a checked backward, the optimizer."""

    step: int
    seed: int
    accelerator: Any
    optimizer: torch.optim.Optimizer

    def generator(self, micro: int = 0) -> torch.Generator:
        return step_generator(self.seed, self.step, micro, self.accelerator.process_index)

    def autocast(self) -> AbstractContextManager:
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through accelerate, refusing a non-finite loss before any gradient exists."""
        check_finite(loss, self.step)
        self.accelerator.backward(loss)

    def step_optimizer(self, params) -> None:
        """The outer optimizer step, gradients averaged across processes first (``accelerate launch``)."""
        if self.accelerator.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self.optimizer.step()


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(f"loss became {loss.detach().float().mean().item()} at step {step}; stopping "
                                 f"before the weights moved; try a lower lr or mixed_precision=no")


def _gradient_step(method: GradientMethod, params: dict[str, nn.Parameter], opt, accelerator,
                   config: TrainerConfig, step: int) -> float:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(config.grad_accum):
        gen = step_generator(config.seed, step, micro, accelerator.process_index)
        with accelerator.autocast():
            loss = method.loss(step, gen)
        check_finite(loss, step)
        accelerator.backward(loss / config.grad_accum)
        total += float(loss.detach()) / config.grad_accum
    if accelerator.num_processes > 1:
        for p in params.values():
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
    method.after_backward()
    if config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(list(params.values()), config.max_grad_norm)
    opt.step()
    return total


def _restore(folder: Path, resume: bool, fingerprint: dict, params: dict[str, nn.Parameter], raw_opt,
             method: Method) -> tuple[int, float, list[float]]:
    """(start step, elapsed seconds, losses) from the checkpoint in ``folder``, or from scratch."""
    state = ckpt.load_checkpoint(folder)
    if state is None:
        return 0, 0.0, []
    if not resume:
        raise TrainingError(f"{folder} holds a checkpoint of an interrupted run; pass --resume to continue "
                            f"it or --overwrite to start over")
    tensors, meta = state
    if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise TrainingError(f"the checkpoint in {folder} belongs to a different run (method, concept, "
                            f"model or options differ); use --overwrite to start over")
    missing = [n for n in params if f"param.{n}" not in tensors]
    if missing:
        raise TrainingError(f"checkpoint in {folder} lacks {len(missing)} parameter(s), e.g. {missing[0]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
    ckpt.load_optimizer(raw_opt, tensors, meta["optimizer"])
    method.load_state_tensors({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")})
    return meta["step"], meta["seconds"], meta.get("losses", [])


def train(method: Method, config: TrainerConfig, work_dir: str | Path | None = None, resume: bool = False,
          fingerprint: dict | None = None, accelerator=None,
          after_setup: Callable[[], None] | None = None) -> TrainResult:
    """Set ``method`` up (seeded) and run it to the end: ``config.steps`` steps, or one closed-form edit.

    ``work_dir`` holds the periodic checkpoint; with ``resume`` the run continues from it, and
    ``fingerprint`` (method, concept, config ...) must equal the one it was written with.
    ``after_setup`` runs (untimed) between the method's setup and its first change to the weights:
    the place to hash the components it will change.
    """
    if config.steps < 0 or config.grad_accum < 1:
        raise TrainingError("steps must be >= 0 and grad_accum >= 1")
    accelerator = accelerator or make_accelerator(config)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    method.setup(torch.Generator().manual_seed(config.seed))
    setup_seconds = time.perf_counter() - t0
    if after_setup is not None:
        after_setup()
    if isinstance(method, ClosedFormMethod):
        t1 = time.perf_counter()
        method.apply(step_generator(config.seed, 0))
        peak, kind = _peak_memory(device)
        return TrainResult(method.kind, 0, round(setup_seconds + time.perf_counter() - t1, 3), peak, kind, None)
    if not isinstance(method, (GradientMethod, SteppingMethod)):
        raise TrainingError(f"{type(method).__name__} is none of GradientMethod, SteppingMethod, ClosedFormMethod")
    params = method.trainable_parameters()
    if not params:
        raise TrainingError(f"{method.name} selects no parameter to train")
    opt = accelerator.prepare(method.make_optimizer(list(params.values())))
    raw_opt = getattr(opt, "optimizer", opt)
    folder = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    fp = dict(fingerprint or {}, trainer={k: v for k, v in asdict(config).items() if k != "progress"})
    start, elapsed, losses = _restore(folder, resume, fp, params, raw_opt, method) if folder else (0, 0.0, [])
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="erase", mininterval=2,
               file=sys.stderr, disable=not (config.progress and accelerator.is_main_process))
    t1 = time.perf_counter()
    for step in bar:
        if isinstance(method, GradientMethod):
            loss = _gradient_step(method, params, opt, accelerator, config, step)
        else:
            loss = float(method.training_step(StepContext(step, config.seed, accelerator, opt)))
        losses.append(round(loss, 6))
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if folder is not None and accelerator.is_main_process and config.checkpoint_every > 0 and \
                done % config.checkpoint_every == 0 and done < config.steps:
            tensors = {f"param.{n}": p.detach() for n, p in params.items()}
            opt_tensors, opt_meta = ckpt.optimizer_tensors(raw_opt)
            tensors.update(opt_tensors)
            tensors.update({f"method.{k}": v for k, v in method.state_tensors().items()})
            ckpt.save_checkpoint(folder, tensors, {"step": done, "seconds": elapsed + time.perf_counter() - t1,
                                                   "losses": losses, "optimizer": opt_meta, "fingerprint": fp})
    bar.close()
    peak, kind = _peak_memory(device)
    seconds = setup_seconds + elapsed + time.perf_counter() - t1
    return TrainResult(method.kind, config.steps, round(seconds, 3), peak, kind,
                       losses[-1] if losses else None, start, losses)
