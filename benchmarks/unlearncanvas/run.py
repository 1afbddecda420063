"""unlearncanvas-eval: the UnlearnCanvas protocol, end to end (a command line over ``evaluate``).

    unlearncanvas-eval --target Fire --out outputs/uc-base                     # embedded base model
    unlearncanvas-eval --artifact outputs/esd-fire --out outputs/uc-esd-fire   # an erased model
    accelerate launch -m benchmarks.unlearncanvas.run --model runwayml/stable-diffusion-v1-5 \\
        --domain unlearncanvas --style-classifier style50.pth --object-classifier style50_cls.pth \\
        --dataset data/unlearn_canvas --clip-model ViT-L-14 --clip-pretrained openai --out ...
    unlearncanvas-eval merge outputs/uc-*/results.json --out outputs/leaderboard

Every scorer and model is loaded before any image is generated, so a wrong path fails in
seconds, with one line and exit code 2. What each step does is in ``evaluate.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import torch

from benchmarks.unlearncanvas import leaderboard
from benchmarks.unlearncanvas.config import EvalConfig, UsageError
from benchmarks.unlearncanvas.evaluate import evaluate, evaluation_device, load_model
from benchmarks.unlearncanvas.judges import load_judges
from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from benchmarks.unlearncanvas.report import summary_text
from erase.artifacts import read_record
from erase.attacks.unlearndiffatk import INSERTIONS, KINDS
from erase.concepts import DOMAINS
from pipelines.threads import MAX_THREADS, SMALL_MODEL, check_threads, restore_threads, use_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearncanvas-eval", description="Score a (possibly erased) diffusion model on the UnlearnCanvas "
        "protocol: answer set, UA/IRA/CRA, CLIP removal accuracy and score, FID, efficiency. "
        "`unlearncanvas-eval merge RESULTS... --out DIR` builds a leaderboard.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="base pipeline folder or hub id (default: the embedded model, "
                   "or the base named in the artifact)")
    g.add_argument("--artifact", default=None, help="erased-model folder from erase-concept (applied onto the base)")
    g.add_argument("--label", default=None, help="row name in leaderboards (default: the artifact's method, or 'base')")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: accelerate's choice)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    g.add_argument("--threads", type=int, default=0, help=f"torch CPU threads, at most {MAX_THREADS}; 0 (default): one "
                   f"for a UNet under {SMALL_MODEL / 1e6:g} M parameters, else every available core (README 'Threads')")
    g = p.add_argument_group("protocol")
    g.add_argument("--domain", choices=sorted(DOMAINS), default="minicanvas")
    g.add_argument("--target", action="append", default=None,
                   help="erased concept (style or object), repeatable; 'all' = every concept "
                        "(default: the artifact's concept, else all)")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="evaluation seeds (default: 188 288 588 688 888)")
    g.add_argument("--themes", nargs="+", default=None, help="a subset of themes, for smoke tests (default: all); "
                   "results say 'subset, not the protocol' and merge refuses them without --allow-subset")
    g.add_argument("--objects", nargs="+", default=None, help="a subset of objects, for smoke tests (default: all)")
    g = p.add_argument_group("answer set")
    g.add_argument("--out", required=True, help="folder for results.json, results.md and the grid PNG")
    g.add_argument("--answer-set", default=None, help="answer-set folder (default: <out>/answer_set); resumed if present")
    g.add_argument("--score-only", action="store_true", help="score an existing answer set; load no model (its "
                   "sampler settings, wording, grid and model come from its answer_set.json)")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps (unlearncanvas: %d, minicanvas: %d)"
                   % (SAMPLER_DEFAULTS["unlearncanvas"][0], SAMPLER_DEFAULTS["minicanvas"][0]))
    g.add_argument("--guidance", type=float, default=None, help="CFG scale (unlearncanvas: %s, minicanvas: %s)"
                   % (SAMPLER_DEFAULTS["unlearncanvas"][1], SAMPLER_DEFAULTS["minicanvas"][1]))
    g.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    g.add_argument("--batch-size", type=int, default=None, help="images per UNet call (default 64; on a GPU fewer "
                   "when its free memory says so, README 'Memory at SD 1.5, 512 px')")
    g.add_argument("--ext", choices=("png", "jpg"), default=None, help="default: png (minicanvas), jpg (unlearncanvas)")
    g.add_argument("--photo-phrase", default=None, help="style phrase for the photo theme (default 'Photo'); "
                   "'Seed Images' reproduces the released unlearned-model samplers")
    g = p.add_argument_group("classifier")
    g.add_argument("--classifier", default=None, help="MiniCanvas classifier folder (default: the shipped one)")
    g.add_argument("--style-classifier", default=None, help="UnlearnCanvas style50.pth")
    g.add_argument("--object-classifier", default=None, help="UnlearnCanvas style50_cls.pth")
    g.add_argument("--classifier-arch", default=EvalConfig.classifier_arch)
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip", default=None, help="MiniCanvas CLIP folder (default: the shipped one)")
    g.add_argument("--clip-model", default=None, help="open_clip architecture, e.g. ViT-L-14")
    g.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag or weights file")
    g.add_argument("--no-clip", action="store_true", help="skip the CLIP metrics")
    g.add_argument("--no-baseline", action="store_true", help="do not put the base model's figures beside the "
                   "erased model's (they cost one base answer set per base model and settings, then are cached)")
    g.add_argument("--baseline-cache", default=None, help="folder of cached base-model figures (default: "
                   "$ERASE_CACHE/baselines or ~/.cache/erase/baselines)")
    g = p.add_argument_group("FID")
    g.add_argument("--dataset", default=None, help="reference dataset <root>/<Style>/<Object>/<idx>.<ext> "
                   "(default for minicanvas: rendered from the base model's training seed)")
    g.add_argument("--inception-weights", default=None, help="torchmetrics FID Inception weights file; without it "
                   "the Frechet distance is taken on CLIP image features and named so")
    g.add_argument("--no-fid", action="store_true")
    g = p.add_argument_group("robustness (README 'Robustness to adversarial prompts')")
    g.add_argument("--attack", choices=KINDS, default=None,
                   help="attack every target: unlearndiffatk (discrete tokens) or soft (free embeddings, an upper "
                        "bound); needs --target or an --artifact")
    g.add_argument("--attack-tokens", type=int, default=None, help="adversarial tokens k (default 3)")
    g.add_argument("--attack-insertion", choices=INSERTIONS, default=None,
                   help="where the tokens go (default: prefix on unlearncanvas, concept on minicanvas)")
    g.add_argument("--attack-timesteps", type=int, default=None,
                   help="timesteps of the schedule, a judged block each (default 50 unlearncanvas, 10 minicanvas)")
    g.add_argument("--attack-steps", type=int, default=None,
                   help="Adam steps per timestep (default 40 unlearncanvas, 30 minicanvas)")
    g.add_argument("--attack-prompts", type=int, default=None,
                   help="attack the first N of each target's prompts (seed-major, then label order; default all)")
    g.add_argument("--grid-seed", type=int, default=None, help="seed shown in the PNG grid (default: the first)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (model loading included)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The ``EvalConfig`` a command line asks for (the only place that reads the Namespace)."""
    return EvalConfig(
        domain=args.domain, targets=args.target, seeds=args.seeds, themes=args.themes, objects=args.objects,
        steps=args.steps, guidance=args.guidance, baseline=not args.no_baseline, baseline_cache=args.baseline_cache,
        size=args.size, batch_size=args.batch_size, ext=args.ext, photo_phrase=args.photo_phrase, out=args.out,
        answer_dir=args.answer_set, label=args.label, grid_seed=args.grid_seed, classifier=args.classifier,
        style_classifier=args.style_classifier, object_classifier=args.object_classifier,
        classifier_arch=args.classifier_arch, use_clip=not args.no_clip, clip_dir=args.clip,
        clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, use_fid=not args.no_fid,
        dataset=args.dataset, inception_weights=args.inception_weights, device=args.device,
        progress=not args.no_progress, attack=args.attack, attack_tokens=args.attack_tokens,
        attack_insertion=args.attack_insertion, attack_timesteps=args.attack_timesteps,
        attack_steps=args.attack_steps, attack_prompts=args.attack_prompts)


def run(config: EvalConfig, model: str | None = None, artifact: str | None = None, score_only: bool = False,
        dtype: torch.dtype = torch.float32, threads: int | None = None) -> int:
    """Check everything, load the judges, then the model, then evaluate; print the summary.

    ``threads``: torch CPU threads (0: ``pipelines.threads.default_threads`` for the UNet; None: the
    process's, unchanged); the previous count is restored afterwards.
    """
    started = time.perf_counter()
    if score_only and artifact:
        raise UsageError("--score-only loads no model; drop --artifact or --score-only (use --label to name the row)")
    check_threads(threads)
    concept = read_record(artifact).concept if artifact else None
    if score_only:  # the answer set's own settings, before any default fills a field
        config = config.from_manifest(config.answer_manifest())
    config = config.resolved(concept)
    accelerator, device = evaluation_device(config.device)
    with restore_threads():
        judges = load_judges(config, device)
        pipe, info = (None, None) if score_only else load_model(model, artifact, device=device, dtype=dtype,
                                                                progress=config.progress)
        work = sum(p.numel() for p in pipe.unet.parameters()) if pipe else SMALL_MODEL  # scoring only: batched judges
        note = use_threads(threads, work, check_load=pipe is not None)["note"]
        if note and accelerator.is_main_process:
            print(f"note: {note}", file=sys.stderr)
        results = evaluate(pipe, config, model_info=info, judges=judges, started=started)
    if accelerator.is_main_process:
        print(summary_text(results.to_json(), config.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return leaderboard.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return run(config_from_args(args), args.model, args.artifact, args.score_only, getattr(torch, args.dtype),
                   args.threads)
    except (ValueError, OSError) as err:  # every project error type is a ValueError with a one-line message
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"unlearncanvas-eval: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
