"""erase-concept: one path for every method, diffusion model or GAN/VAE generator.

    erase-concept --method esd --concept Candy --output erased/esd-candy
    erase-concept --method salun --concept "Van Gogh" --model stable-diffusion-v1-5/stable-diffusion-v1-5 remap_to=Monet
    erase-concept --method feature-unlearning --model digits-vae --concept 7

Option precedence (later wins): the method's paper defaults, the world's preset (the embedded
model's, or a shipped generator's dataset; ``--no-preset`` skips it), ``--config FILE.toml``,
``--steps``, then ``key=value`` arguments (anywhere on the line). Every input is checked before any
model is built or anything is written; the artifact is built under a temporary name and renamed into
place, and checkpoints of an unfinished run sit in a hidden ``.<output>.work`` folder beside it
until ``--resume`` finishes it (with no checkpoint there, ``--resume`` starts at step 0 and says so,
so one command line both starts and continues a job). What runs differently from what was asked
(``--mixed-precision fp16`` on a CPU trains in float32) is said in one ``note:`` line and recorded in
``erase.json``, as is the thread count (``pipelines.threads``: one for a small model, else the cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from erase import checkpoint as ckpt
from erase.artifacts import ArtifactError, EraseRecord, base_entry, check_output, save_artifact
from erase.concepts import Concept, ConceptError, resolve_concept
from erase.memory import BatchPlan, free_device_bytes, plan_method_batch
from erase.data.layout import DatasetLayoutError
from erase.methods import METHODS, get_method
from erase.methods.base import ClosedFormMethod, Method
from erase.methods.config import MethodConfigError, build_config, describe_config, load_preset
from erase.provenance import hardware, module_sha256, versions
from erase.trainer import (CHECKPOINT, MAX_SEED, NonFiniteLossError, TrainerConfig, TrainingError,
                           autocast_precision, make_accelerator, train)
from pipelines.generators import SHIPPED_ROOT, load_generator, resolve_generator
from pipelines.stable_diffusion import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME, ModelLoadError, load_pipeline, resolve_model
from pipelines.threads import MAX_THREADS, SMALL_MODEL, ThreadsError, check_threads, restore_threads, use_threads
from pipelines.weights import CheckpointError

TRAINER_KEYS = ("mixed_precision", "grad_accum", "checkpoint_every", "max_grad_norm")
MAX_NAME = 80  # characters of the concept kept in the default output folder name ...
MAX_NAME_BYTES = 160  # ... and its UTF-8 bytes: file names hold 255 bytes, with room for ".<name>.work" etc.


class InputError(ValueError):
    """Bad command-line input; printed as one ``error:`` line, exit code 2."""


def _slug(text: str) -> str:
    """The concept as a folder name: letters of any script and digits kept, the rest turned into dashes, capped."""
    slug = (re.sub(r"[^\w]+", "-", text).strip("-").lower() or "concept")[:MAX_NAME]
    while len(slug.encode()) > MAX_NAME_BYTES:
        slug = slug[:-1]
    return slug


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value
    return out


def read_config_file(path: str | Path, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method options, trainer options) from a TOML file: top-level keys, a [<method>] and a [trainer] table."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"cannot read config file {path}: {err}") from None
    trainer = data.pop("trainer", {})
    options = {k: v for k, v in data.items() if not isinstance(v, dict)}
    options.update(data.get(method, {}))
    unknown = [k for k in trainer if k not in TRAINER_KEYS]
    if unknown:
        raise InputError(f"unknown [trainer] key {unknown[0]!r} in {path}; known: {', '.join(TRAINER_KEYS)}")
    return options, trainer


@dataclasses.dataclass
class BaseModel:
    """Where the base model comes from, resolved without loading it."""

    source: str  # what the loader takes
    id: str  # what erase.json records
    world: str | None  # the preset world: minicanvas for the embedded model, a shipped generator's dataset
    folder: Path | None  # never written to
    local: bool = False  # a user's folder (not the embedded model or a shipped generator): recorded by its path

    def entry(self, model_type: str, artifact_dir: Path) -> dict[str, Any]:
        """What erase.json records (``erase.artifacts.base_entry``)."""
        return base_entry(self.id, model_type, self.folder if self.local else None, artifact_dir)


def resolve_base(cls: type[Method], model: str | None) -> BaseModel:
    if cls.model_type == "generator":
        if not model:
            raise InputError(f"{cls.name} needs --model: a generator folder or a shipped name "
                             f"({', '.join(sorted(p.name for p in SHIPPED_ROOT.iterdir() if p.is_dir()))})")
        path = resolve_generator(model)
        shipped = path.parent == SHIPPED_ROOT
        world = load_generator(path).dataset or None
        return BaseModel(str(path), path.name if shipped else str(path.absolute()), world, path, local=not shipped)
    source = resolve_model(model)
    if Path(source) == EMBEDDED_MODEL_DIR:
        return BaseModel(source, EMBEDDED_MODEL_NAME, "minicanvas", EMBEDDED_MODEL_DIR)
    folder = Path(source) if Path(source).is_dir() else None
    return BaseModel(source, str(folder.absolute()) if folder else source, None, folder, local=folder is not None)


def erase_concept(method: str, concept: str, kind: str | None = None, model: str | None = None,
                  output: str | Path | None = None, options: dict[str, Any] | None = None,
                  config_file: str | Path | None = None, steps: int | None = None, seed: int = 0,
                  overwrite: bool = False, resume: bool = False, preset: bool = True, device: str | None = None,
                  artifact_format: str = "auto", trainer_options: dict[str, Any] | None = None,
                  progress: bool = True, threads: int | None = None) -> tuple[Path, EraseRecord]:
    """Run one erasure of any kind and save its artifact; returns (artifact folder, its record).

    ``threads``: torch CPU threads for the run (0: ``pipelines.threads.default_threads`` for the model;
    None: the process's setting, unchanged); the previous count is restored afterwards.
    ``progress=False`` silences the progress bars, the libraries' loading bars included.
    """
    cls = get_method(method)
    if cls.model_type == "generator":
        text = (concept or "").strip()
        if not text:
            raise InputError("the feature is empty; give --concept (or --feature) NAME")
        target = Concept(text, text, "feature", text, None)
    else:
        target = resolve_concept(concept, kind)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if artifact_format not in ("auto", "full", "partial"):
        raise InputError(f"--format must be auto, full or partial, got {artifact_format!r}")
    if device not in (None, "cpu", "cuda"):
        raise InputError(f"--device takes cpu or cuda, got {device!r}; accelerate places the run, so pick a GPU with "
                         "CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1 erase-concept ...)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to this process")
    check_threads(threads)
    base = resolve_base(cls, model)
    out = check_output(Path(output) if output else Path("erased") / f"{cls.name}-{_slug(target.text)}",
                       overwrite, base_dir=base.folder)
    file_options, file_trainer = read_config_file(config_file, cls.name) if config_file else ({}, {})
    found = load_preset(cls.name, base.world, cls.concept_kinds()) if (preset and base.world) else None
    preset_used = found.overrides(target.kind) if found else {}
    closed_form = issubclass(cls, ClosedFormMethod)
    if closed_form and steps is not None:
        raise InputError(f"{cls.name} is a closed-form edit and takes no --steps")
    config = build_config(cls.Config, preset_used, file_options, {"steps": steps} if steps is not None else {},
                          options or {})
    cls.validate(config, target)
    trainer_kw = {**file_trainer, **{k: v for k, v in (trainer_options or {}).items() if v is not None}}
    tcfg = TrainerConfig(steps=0 if closed_form else int(config.steps), seed=seed, progress=progress,
                         cpu=device == "cpu", **trainer_kw)
    if tcfg.grad_accum < 1 or tcfg.checkpoint_every < 0:
        raise InputError("--grad-accum must be at least 1 and --checkpoint-every at least 0")
    work = out.parent / f".{out.name}.work"
    if overwrite and not resume and work.exists():
        shutil.rmtree(work)
    with restore_threads():
        accelerator = make_accelerator(tcfg)
        ran = autocast_precision(accelerator)
        if ran != tcfg.mixed_precision and not closed_form:
            _note(accelerator, f"--mixed-precision {tcfg.mixed_precision} does not run on {accelerator.device.type} "
                  f"(accelerate autocasts nothing there): training in {'float32' if ran == 'no' else ran}; "
                  f"erase.json records mixed_precision={ran!r}")
        if resume and not closed_form and ckpt.find_checkpoint(work / CHECKPOINT) is None:
            _note(accelerator, f"--resume: no checkpoint of an interrupted run in {work}; starting from step 0")
        if cls.model_type == "generator":
            subject = load_generator(base.source)
        else:
            subject = load_pipeline(base.source, device=accelerator.device, progress=progress)
        thread_info = use_threads(threads, _parameters(subject))
        note = thread_info.pop("note")
        if note:
            _note(accelerator, note)
        explicit = "grad_accum" in trainer_kw or any(k.replace("-", "_") == "batch_size"
                                                     for layer in (file_options, options or {}) for k in layer)
        plan = _batch_plan(cls, config, target, subject, accelerator, ran, explicit)
        if plan.grad_accum > 1:
            config = dataclasses.replace(config, batch_size=plan.batch)
            tcfg.grad_accum = plan.grad_accum
            _note(accelerator, f"batch_size {plan.batch * plan.grad_accum} runs as {plan.grad_accum} micro-batches of "
                  f"{plan.batch} (grad_accum {plan.grad_accum}; the update is the same batch mean) to fit "
                  f"{plan.free_bytes / 2**30:.1f} GiB free; pass batch_size= or --grad-accum to choose")
        algo = cls(config, target, subject, accelerator.device)
        hashes: dict[str, str] = {}
        fingerprint = {"method": cls.name, "concept": target.text, "kind": target.kind, "model": base.id,
                       "config": dataclasses.asdict(config)}

        def hash_base() -> None:
            hashes.update({name: module_sha256(m) for name, m in algo.changed_components().items()})

        result = train(algo, tcfg, work, resume, fingerprint, accelerator, after_setup=hash_base)
        accelerator.wait_for_everyone()
        trainer_record = {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "progress"}
        trainer_record.update(mixed_precision=ran, mixed_precision_requested=tcfg.mixed_precision)
        record = EraseRecord(
            method=cls.name, method_kind=cls.kind, concept=target.text, concept_name=target.name, kind=target.kind,
            domain=target.domain.name if target.domain else None, config=dataclasses.asdict(config),
            preset={"name": found.name, "overrides": preset_used} if preset_used else None,
            base_model=base.entry(cls.model_type, out), seed=seed,
            trainer=None if closed_form else trainer_record,
            train={"kind": result.kind, "steps": result.steps, "final_loss": result.final_loss,
                   "resumed_from": result.resumed_from, "first_losses": result.losses[:5],
                   "last_losses": result.losses[-5:]},
            cost={"seconds": result.seconds, "peak_memory_bytes": result.peak_memory_bytes,
                  "peak_memory_kind": result.peak_memory_kind, "device": str(accelerator.device),
                  "processes": accelerator.num_processes, "torch_threads": torch.get_num_threads(),
                  "threads": thread_info, "batch": plan.to_json(), "hardware": hardware()},
            run=algo.run_info(), versions=versions())
        if accelerator.is_main_process:
            trained = None if closed_form else list(algo.trainable_parameters())
            fmt = cls.artifact_format if artifact_format == "auto" else artifact_format
            record = save_artifact(out, algo.changed_components(), record, trained, algo.extra_tensors(), overwrite,
                                   fmt, hashes)
            shutil.rmtree(work, ignore_errors=True)
        accelerator.wait_for_everyone()
    return out, record


def _batch_plan(cls: type[Method], config: Any, concept: Concept, subject: Any, accelerator, precision: str,
                explicit: bool) -> BatchPlan:
    """The micro-batch of a diffusion method on this device (``erase.memory``); generators keep their batch."""
    batch = int(getattr(config, "batch_size", 1))
    if cls.model_type != "diffusion" or not hasattr(config, "batch_size"):
        return BatchPlan(batch, 1, "default", "the method has no batch_size option")
    profile = cls.memory_profile(config, concept, subject)
    return plan_method_batch(profile, batch, explicit, free_device_bytes(accelerator.device), subject.unet.config,
                             int(subject.unet.config.sample_size), precision)


def _parameters(subject: Any) -> int:
    """Parameters of the network that does the work: a pipeline's UNet, a generator's network."""
    module = getattr(subject, "unet", None) or getattr(subject, "model", subject)
    return sum(p.numel() for p in module.parameters())


def _note(accelerator, message: str) -> None:
    """One ``note:`` line on stderr (main process only): the run differs from what was asked, and how."""
    if accelerator.is_main_process:
        print(f"note: {message}", file=sys.stderr)


def _epilog() -> str:
    lines = ["methods and their options (key=value; defaults are the papers', see README.md):"]
    for name, cls in sorted(METHODS.items()):
        lines.append(f"  {name} ({cls.kind}, {cls.model_type}): {cls.summary}")
        lines += describe_config(cls.Config)
        for world in ("minicanvas", "digits"):
            found = load_preset(name, world, cls.concept_kinds())
            lines += found.describe() if found else []
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="erase-concept", description="Erase a concept from a diffusion model (or a feature from a "
                "GAN/VAE generator) and save the result.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--concept", help='the concept to erase, e.g. "Candy" or "Van Gogh" (a feature such as 7 for '
                   "generators)")
    p.add_argument("--feature", help="same as --concept (the name the feature-unlearning paper uses)")
    p.add_argument("--labels", help="feature-unlearning: JSON file marking which seeded samples show the feature")
    p.add_argument("--classifier", choices=("digits", "minicanvas"),
                   help="feature-unlearning: a classifier that labels the samples instead of a --labels file")
    p.add_argument("--kind", choices=("style", "object"), help="default: from the benchmark domains, else object")
    p.add_argument("--model", help="hub id or diffusers folder (default: the embedded minicanvas-sd); for "
                   "generator methods a generator folder or shipped name")
    p.add_argument("--output", help="artifact folder (default erased/<method>-<concept>)")
    p.add_argument("--config", help="TOML file with method options (and a [trainer] table)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the method's default)")
    p.add_argument("--seed", type=int, default=0, help=f"0 .. {MAX_SEED} (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact / discard a checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoint is in the "
                   "hidden .<output>.work folder (same method, concept, model and options, else refused); with no "
                   "checkpoint there, start from step 0 and say so")
    p.add_argument("--no-preset", action="store_true", help="do not apply the world's preset")
    p.add_argument("--device", help="cpu to force the CPU, cuda to require a GPU (default: "
                   "what accelerate picks; choose a GPU with CUDA_VISIBLE_DEVICES)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="autocast precision; on a CPU only bf16 runs (fp16 trains in float32, with a note)")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (default 1)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 50, 0: never)")
    p.add_argument("--format", default="auto", choices=("auto", "full", "partial"),
                   help="whole changed components, or only trained tensors (auto: the method's choice, AdvUnlearn's "
                   "full; else partial when <25%%)")
    p.add_argument("--threads", type=int, default=0, help=f"torch CPU threads, at most {MAX_THREADS}; 0 (default): one for a "
                   f"model under {SMALL_MODEL / 1e6:g} M parameters (the embedded ones), else every available core "
                   "(README 'Threads')")
    p.add_argument("--quiet", action="store_true", help="no progress bars (model loading included)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="method options, see below")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    t0 = time.perf_counter()
    try:
        if args.feature and args.concept and args.feature != args.concept:
            raise InputError("give the concept once: --concept or --feature")
        options = parse_overrides(args.overrides)
        for key in ("labels", "classifier"):
            if getattr(args, key):
                if get_method(args.method).model_type != "generator":
                    raise InputError(f"--{key} belongs to generator methods (feature-unlearning)")
                options[key] = getattr(args, key)
        trainer = {"mixed_precision": args.mixed_precision, "grad_accum": args.grad_accum,
                   "checkpoint_every": args.checkpoint_every}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            out, record = erase_concept(args.method, args.feature or args.concept, args.kind, args.model,
                                        args.output, options, args.config, args.steps, args.seed, args.overwrite,
                                        args.resume, not args.no_preset, args.device, args.format, trainer,
                                        not args.quiet, args.threads)
        for w in caught:
            if "not linearly editable" in str(w.message):
                print(f"warning: {w.message}", file=sys.stderr)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (InputError, MethodConfigError, ConceptError, ModelLoadError, ArtifactError, TrainingError,
            CheckpointError, DatasetLayoutError, ThreadsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    cost = record.cost
    print(f"saved {record.method} artifact for {record.concept!r} to {out} ({record.train['kind']}, "
          f"{record.train['steps']} steps)\n"
          f"  time {cost['seconds']:.1f} s (total {time.perf_counter() - t0:.1f} s), peak memory "
          f"{cost['peak_memory_bytes'] / 2**20:.1f} MiB ({cost['peak_memory_kind']}), "
          f"size {cost['artifact_bytes'] / 2**20:.2f} MiB, {cost['torch_threads']} torch thread(s) "
          f"({cost['threads']['chosen_by']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
