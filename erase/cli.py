"""erase-concept: remove a concept from a Stable Diffusion 1.x model (or the embedded one).

    erase-concept --method esd --concept Candy --output erased/esd-candy
    erase-concept --method salun --concept "Van Gogh" --model runwayml/stable-diffusion-v1-5 remap_to=Monet ...

Option precedence (later wins): the method's paper defaults, the embedded preset (only when the
base model is the embedded one; ``--no-preset`` skips it), ``--config FILE.toml``, ``--steps``,
then ``key=value`` arguments. Every input is checked before anything is written; the artifact is
built under a temporary name and renamed into place, and checkpoints of an unfinished run sit
in a hidden ``.<output>.work`` folder beside it until ``--resume`` finishes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import torch

from erase.artifacts import ArtifactError, check_output, module_sha256, save_artifact
from erase.checkpoint import CheckpointError
from erase.methods import METHODS, MethodConfigError, get_method
from erase.methods.base import build_config, describe_config, find_domain
from erase.trainer import NonFiniteLossError, TrainerConfig, TrainingError, make_accelerator, run_method

TRAINER_KEYS = ("mixed_precision", "grad_accum", "checkpoint_every", "max_grad_norm")


class InputError(ValueError):
    """Bad command-line input; printed as one ``error:`` line, exit code 2."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "concept"


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


def infer_kind(concept: str) -> str:
    domain = find_domain(concept)
    return domain.concept_kind(concept) if domain is not None else "object"


def erase_concept(method: str, concept: str, kind: str | None = None, model: str | None = None,
                  output: str | Path | None = None, options: dict[str, Any] | None = None,
                  config_file: str | Path | None = None, steps: int | None = None, seed: int = 0,
                  overwrite: bool = False, resume: bool = False, preset: bool = True, device: str | None = None,
                  artifact_format: str = "auto", trainer_options: dict[str, Any] | None = None,
                  progress: bool = True) -> tuple[Path, dict]:
    """Run one erasure and save its artifact; returns (artifact folder, erase.json content)."""
    from pipelines.stable_diffusion import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME, load_pipeline, resolve_model

    cls = get_method(method)
    concept = (concept or "").strip()
    if not concept:
        raise InputError("the concept is empty; give --concept TEXT")
    kind = kind or infer_kind(concept)
    if kind not in ("style", "object"):
        raise InputError(f"--kind must be style or object, got {kind!r}")
    source = resolve_model(model)
    embedded = Path(source) == EMBEDDED_MODEL_DIR
    out = Path(output) if output else Path("erased") / f"{cls.name}-{_slug(concept)}"
    out = check_output(out, overwrite, base_dir=source if Path(source).is_dir() else None)
    file_options, file_trainer = read_config_file(config_file, cls.name) if config_file else ({}, {})
    preset_used = dict(cls.embedded_preset.get(kind, {})) if (embedded and preset) else {}
    layers = [preset_used, file_options, {"steps": steps} if steps is not None else {}, options or {}]
    config = build_config(cls.Config, *layers)
    trainer_kw = {**file_trainer, **{k: v for k, v in (trainer_options or {}).items() if v is not None}}
    tcfg = TrainerConfig(steps=int(config.steps), seed=seed, progress=progress, cpu=device == "cpu",
                         **trainer_kw)
    if tcfg.steps < 1:
        raise InputError(f"steps must be positive, got {tcfg.steps}")
    if artifact_format not in ("auto", "full", "partial"):
        raise InputError(f"--format must be auto, full or partial, got {artifact_format!r}")
    work = out.parent / f".{out.name}.work"
    if overwrite and not resume and work.exists():
        shutil.rmtree(work)
    accelerator = make_accelerator(tcfg)
    pipe = load_pipeline(source, device=accelerator.device)
    base_id = EMBEDDED_MODEL_NAME if embedded else (str(Path(source).absolute()) if Path(source).is_dir() else source)
    algo = cls(config, concept, kind, pipe, accelerator.device)
    hashes: dict[str, str] = {}
    fingerprint = {"method": cls.name, "concept": concept, "kind": kind, "model": base_id,
                   "config": dataclasses.asdict(config)}

    def hash_base() -> None:
        hashes.update({name: module_sha256(m) for name, m in algo.changed_components().items()})

    result = run_method(algo, tcfg, work, resume, fingerprint, accelerator, after_setup=hash_base)
    accelerator.wait_for_everyone()
    meta = {
        "method": cls.name, "concept": concept, "kind": kind, "config": dataclasses.asdict(config),
        "preset": {"name": "embedded", "overrides": preset_used} if preset_used else None,
        "base_model": {"id": base_id, "sha256": hashes},
        "trainer": {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "progress"},
        "train": {"steps": result.steps, "final_loss": result.final_loss, "resumed_from": result.resumed_from,
                  "first_losses": result.losses[:5], "last_losses": result.losses[-5:]},
        "cost": {"seconds": result.seconds, "peak_memory_bytes": result.peak_memory_bytes,
                 "peak_memory_kind": result.peak_memory_kind, "device": str(accelerator.device),
                 "processes": accelerator.num_processes, "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }
    meta["run"] = algo.run_info()
    if accelerator.is_main_process:
        trained = list(algo.trainable_parameters())
        meta = save_artifact(out, algo.changed_components(), meta, trained, algo.extra_tensors(), overwrite,
                             artifact_format, hashes)
        shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out, meta


def _epilog() -> str:
    lines = ["methods and their options (key=value; defaults are the papers', see README.md):"]
    for name, cls in sorted(METHODS.items()):
        lines.append(f"  {name}: {cls.summary}")
        lines += describe_config(cls.Config)
        for kind, over in cls.embedded_preset.items():
            lines.append(f"    embedded preset ({kind}): " + ", ".join(f"{k}={v}" for k, v in over.items()))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="erase-concept", description="Erase a concept from a diffusion model and save the result.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--concept", help='the concept to erase, e.g. "Candy" or "Van Gogh"')
    p.add_argument("--feature", help="feature-unlearning: the feature to remove from a GAN/VAE (e.g. 7, Forest)")
    p.add_argument("--labels", help="feature-unlearning: JSON file marking which seeded samples show the feature")
    p.add_argument("--classifier", choices=("digits", "minicanvas"),
                   help="feature-unlearning: a classifier that labels the samples instead of a --labels file")
    p.add_argument("--kind", choices=("style", "object"), help="default: from the benchmark domains, else object")
    p.add_argument("--model", help="hub id or diffusers folder; default: the embedded minicanvas-sd")
    p.add_argument("--output", help="artifact folder (default erased/<method>-<concept>)")
    p.add_argument("--config", help="TOML file with method options (and a [trainer] table)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the method's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact / discard a checkpoint")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--no-preset", action="store_true", help="do not apply the embedded-model preset")
    p.add_argument("--device", help="cpu to force the CPU (default: what accelerate picks)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (default 1)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 50, 0: never)")
    p.add_argument("--format", default="auto", choices=("auto", "full", "partial"),
                   help="whole changed components, or only trained tensors (auto: partial when <25%%)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="method options, see below")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.unlearncanvas.dataset import DatasetLayoutError
    from pipelines.stable_diffusion import ModelLoadError

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        trainer = {"mixed_precision": args.mixed_precision, "grad_accum": args.grad_accum,
                   "checkpoint_every": args.checkpoint_every}
        if get_method(args.method).name == "feature-unlearning":
            from erase.methods.feature_unlearning import erase_feature

            feature = (args.feature or args.concept or "").strip()
            if not feature:
                raise InputError("the feature is empty; give --feature NAME")
            if not args.model:
                raise InputError("feature-unlearning needs --model <generator artifact folder or shipped name>")
            out, meta = erase_feature(args.model, feature, args.output or f"erased/feature-unlearning-{_slug(feature)}",
                                      args.labels, args.classifier, parse_overrides(args.overrides), args.steps,
                                      args.seed, args.overwrite, args.resume, not args.quiet)
            print(f"saved feature-unlearning artifact for {feature!r} to {out} ({meta['training']['seconds']} s)")
            return 0
        if args.feature or args.labels or args.classifier:
            raise InputError("--feature, --labels and --classifier belong to --method feature-unlearning")
        out, meta = erase_concept(args.method, args.concept, args.kind, args.model, args.output,
                                  parse_overrides(args.overrides), args.config, args.steps, args.seed, args.overwrite,
                                  args.resume, not args.no_preset, args.device, args.format, trainer, not args.quiet)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (InputError, MethodConfigError, ModelLoadError, ArtifactError, TrainingError, CheckpointError,
            DatasetLayoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    cost = meta["cost"]
    print(f"saved {meta['method']} artifact for {meta['concept']!r} to {out}\n"
          f"  time {cost['seconds']:.1f} s (total {time.perf_counter() - t0:.1f} s), peak memory "
          f"{cost['peak_memory_bytes'] / 2**20:.1f} MiB ({cost['peak_memory_kind']}), "
          f"size {cost['artifact_bytes'] / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
