"""unlearncanvas-eval: the UnlearnCanvas protocol, end to end.

    unlearncanvas-eval --target Fire --out outputs/uc-base                     # embedded base model
    unlearncanvas-eval --artifact outputs/esd-fire --out outputs/uc-esd-fire   # an erased model
    accelerate launch -m benchmarks.unlearncanvas.run --model runwayml/stable-diffusion-v1-5 \\
        --domain unlearncanvas --style-classifier style50.pth --object-classifier style50_cls.pth \\
        --dataset data/unlearn_canvas --clip-model ViT-L-14 --clip-pretrained openai --out ...
    unlearncanvas-eval merge outputs/uc-*/results.json --out outputs/leaderboard

Steps: answer set (generated, resumable, sharded over processes) -> style/object classifier
-> UA, IRA, CRA per target and the per-concept accuracy table -> CLIP zero-shot removal accuracy
and CLIP score -> Frechet distance to the protocol's reference set -> efficiency from the
artifact -> results.json, results.md, answer_set_grid.png. Every scorer and model is loaded
before any image is generated, so a wrong path fails in seconds, with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.unlearncanvas import minicanvas
from benchmarks.unlearncanvas.answer_set import (
    SAMPLER_DEFAULTS, SamplerSettings, check_answer_folder, generate_answer_set, load_images,
    read_answer_set)
from benchmarks.unlearncanvas.constants import UNLEARNCANVAS, Domain
from benchmarks.unlearncanvas.metrics import (
    accuracy_table, efficiency_from_artifact, removal_accuracy, target_mask, unlearncanvas_scores)

SCHEMA = "erase.unlearncanvas-eval/1"
DOMAINS: dict[str, Domain] = {"minicanvas": minicanvas.DOMAIN, "unlearncanvas": UNLEARNCANVAS}
RESULTS_JSON, RESULTS_MD, GRID_PNG = "results.json", "results.md", "answer_set_grid.png"


class UsageError(ValueError):
    """Options that do not fit together."""


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
    g = p.add_argument_group("protocol")
    g.add_argument("--domain", choices=sorted(DOMAINS), default="minicanvas")
    g.add_argument("--target", action="append", default=None,
                   help="erased concept (style or object), repeatable; 'all' = every concept "
                        "(default: the artifact's concept, else all)")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="evaluation seeds (default: 188 288 588 688 888)")
    g = p.add_argument_group("answer set")
    g.add_argument("--out", required=True, help="folder for results.json, results.md and the grid PNG")
    g.add_argument("--answer-set", default=None, help="answer-set folder (default: <out>/answer_set); resumed if present")
    g.add_argument("--score-only", action="store_true", help="score an existing answer set; load no model")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps (unlearncanvas: 100, minicanvas: %d)"
                   % SAMPLER_DEFAULTS["minicanvas"][0])
    g.add_argument("--guidance", type=float, default=None, help="CFG scale (unlearncanvas: 9.0, minicanvas: %s)"
                   % SAMPLER_DEFAULTS["minicanvas"][1])
    g.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--ext", choices=("png", "jpg"), default=None, help="default: png (minicanvas), jpg (unlearncanvas)")
    g.add_argument("--photo-phrase", default="Photo", help="style phrase for the photo theme; 'Seed Images' "
                   "reproduces the released unlearned-model samplers")
    g = p.add_argument_group("classifier")
    g.add_argument("--classifier", default=None, help="MiniCanvas classifier folder (default: the shipped one)")
    g.add_argument("--style-classifier", default=None, help="UnlearnCanvas style50.pth")
    g.add_argument("--object-classifier", default=None, help="UnlearnCanvas style50_cls.pth")
    g.add_argument("--classifier-arch", default="vit_large_patch16_224")
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip", default=None, help="MiniCanvas CLIP folder (default: the shipped one)")
    g.add_argument("--clip-model", default=None, help="open_clip architecture, e.g. ViT-L-14")
    g.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag or weights file")
    g.add_argument("--no-clip", action="store_true", help="skip the CLIP metrics")
    g = p.add_argument_group("FID")
    g.add_argument("--dataset", default=None, help="reference dataset <root>/<Style>/<Object>/<idx>.<ext> "
                   "(default for minicanvas: rendered from the base model's training seed)")
    g.add_argument("--inception-weights", default=None, help="torchmetrics FID Inception weights file; without it "
                   "the Frechet distance is taken on CLIP image features and named so")
    g.add_argument("--no-fid", action="store_true")
    g.add_argument("--grid-seed", type=int, default=None, help="seed shown in the PNG grid (default: the first)")
    g.add_argument("--no-progress", action="store_true")
    return p


# --------------------------------------------------------------------------- setup
def _targets(args, domain: Domain, artifact_meta: dict | None) -> list[str]:
    names = args.target or ([artifact_meta["concept"]] if artifact_meta and artifact_meta.get("concept") else ["all"])
    out: list[str] = []
    for name in names:
        if name.lower() == "all":
            out += [c for c in domain.styles + domain.objects if c not in out]
            continue
        domain.concept_kind(name)  # raises ValueError with the list of known concepts
        if domain.canonical(name) not in out:
            out.append(domain.canonical(name))
    return out


def _classifier(args, domain: Domain, device):
    from benchmarks.unlearncanvas.classifier import SHIPPED_DIR, MiniCanvasClassifier, UnlearnCanvasClassifier

    if args.style_classifier or args.object_classifier:
        if not (args.style_classifier and args.object_classifier):
            raise UsageError("--style-classifier and --object-classifier go together")
        judge = UnlearnCanvasClassifier(args.style_classifier, args.object_classifier, args.classifier_arch, device)
        name = (f"UnlearnCanvas {args.classifier_arch} ({Path(args.style_classifier).name}, "
                f"{Path(args.object_classifier).name})")
    elif domain.name == "unlearncanvas":
        raise UsageError("the unlearncanvas domain needs --style-classifier and --object-classifier "
                         "(the released style50.pth and style50_cls.pth)")
    else:
        folder = args.classifier or SHIPPED_DIR
        judge = MiniCanvasClassifier.from_pretrained(folder).to(device)
        name = f"MiniCanvas classifier ({Path(folder).name})"
    if tuple(judge.themes) != domain.themes or tuple(judge.objects) != domain.objects:
        raise UsageError(f"the classifier's labels do not match the {domain.name} domain")
    return judge, name


def _clip(args, domain: Domain, device):
    from benchmarks.unlearncanvas.clip import ClipScorer

    if args.no_clip:
        return None
    if args.clip_model:
        return ClipScorer.from_open_clip(args.clip_model, args.clip_pretrained, device)
    if args.clip_pretrained:
        raise UsageError("--clip-pretrained needs --clip-model")
    if domain.name != "minicanvas":
        raise UsageError("the embedded CLIP knows only MiniCanvas; name --clip-model/--clip-pretrained or pass --no-clip")
    return ClipScorer.from_minicanvas(args.clip or Path(__file__).parent / "assets" / "minicanvas_clip", device)


def _fid_space(args, clip, device):
    from benchmarks.unlearncanvas.fid import ClipFeatures, InceptionFeatures

    if args.no_fid:
        return None
    if args.inception_weights:
        return InceptionFeatures(args.inception_weights, device)
    if clip is None:
        raise UsageError("FID without --inception-weights uses CLIP image features; drop --no-clip or pass --no-fid")
    return ClipFeatures(clip)


def _reference(args, domain: Domain, tmp: Path):
    """(paths, theme ids, object ids, description) of the protocol's FID reference set."""
    from benchmarks.unlearncanvas.dataset import read_layout, reference_images

    if args.no_fid:
        return None
    if args.dataset:
        root, desc = Path(args.dataset), f"{args.dataset}"
    elif domain.name == "minicanvas":
        from pipelines.minicanvas_model import RecipeConfig

        seed = RecipeConfig().data_seed
        root = minicanvas.write_dataset(tmp / "minicanvas-reference", per_cell=5, seed=seed)
        desc = f"MiniCanvas renders, data seed {seed} (the embedded model's training seed)"
    else:
        raise UsageError("FID on the unlearncanvas domain needs --dataset (the UnlearnCanvas folder) or --no-fid")
    index = read_layout(root, domain)
    paths = reference_images(index)
    themes = np.array([domain.themes.index(p.parent.parent.name) for p in paths])
    objects = np.array([domain.objects.index(p.parent.name) for p in paths])
    return paths, themes, objects, f"{desc}: images 1-5 of every style/object folder, erased target's cells excluded"


def _load_model(args, device, dtype):
    """(pipeline, model description, artifact metadata)."""
    from benchmarks.minicanvas_base import folder_hash
    from pipelines.stable_diffusion import load_erased_pipeline, load_pipeline, resolve_model

    if args.artifact:
        from erase.artifacts import read_metadata

        meta = read_metadata(args.artifact)
        pipe = load_erased_pipeline(args.artifact, device=device, dtype=dtype, model=args.model)
        base = args.model or meta.get("base_model", {}).get("id")
        info = {"base": base, "artifact": str(Path(args.artifact).absolute()), "method": meta.get("method"),
                "concept": meta.get("concept"), "artifact_config": meta.get("config"),
                "erase_json_sha256_16": hashlib.sha256((Path(args.artifact) / "erase.json").read_bytes()).hexdigest()[:16],
                "weights_sha256_16": folder_hash(args.artifact)}
        return pipe, info, meta
    source = resolve_model(args.model)
    pipe = load_pipeline(args.model, device=device, dtype=dtype)
    info = {"base": source if args.model else "minicanvas-sd", "artifact": None, "method": None}
    if Path(source).is_dir():
        info["sha256_16"] = folder_hash(source)
    return pipe, info, None


# --------------------------------------------------------------------------- scoring
def score(answer, domain: Domain, judge, clip, fid_space, reference, targets: Sequence[str],
          photo_phrase: str, progress: bool = True) -> dict:
    """All metrics of one answer set for the given targets."""
    from tqdm.auto import tqdm

    from benchmarks.unlearncanvas.fid import frechet_distance

    n = len(answer)
    theme_pred, object_pred = np.zeros(n, np.int64), np.zeros(n, np.int64)
    emb = feats = None
    size = None
    for sl, x in tqdm(answer.batches(256), total=(n + 255) // 256, desc="scoring", disable=not progress,
                      mininterval=5):
        size = x.shape[-1]
        s, o = judge.predict(x)
        theme_pred[sl], object_pred[sl] = s.cpu().numpy(), o.cpu().numpy()
        if clip is not None:
            e = clip.encode_images(x)
            emb = e if emb is None else torch.cat([emb, e])
        if fid_space is not None:
            f = fid_space(x) if fid_space.kind != "clip" or fid_space.scorer is not clip else e.double()
            feats = f if feats is None else torch.cat([feats, f])
    table = accuracy_table(domain, answer.themes, answer.objects, theme_pred, object_pred)
    out: dict = {"accuracy": table.to_json(), "targets": []}
    if clip is not None:
        from benchmarks.unlearncanvas.clip import grid_prompts

        clip_theme, clip_object = clip.zero_shot(emb, domain, photo_phrase)
        text = clip.encode_texts(grid_prompts(domain, photo_phrase))
        per_image = clip.clip_score(emb, text[answer.themes * len(domain.objects) + answer.objects]).numpy()
        out["clip"] = {"scorer": clip.name, "zero_shot": "softmax over the domain's prompt grid "
                       f"({len(domain.themes)}x{len(domain.objects)} prompts), marginalised per axis",
                       "zero_shot_style_accuracy": float((clip_theme.numpy() == answer.themes).mean()),
                       "zero_shot_object_accuracy": float((clip_object.numpy() == answer.objects).mean()),
                       "clip_score": "100 * max(cos(image, own prompt), 0)", "images": n,
                       "scorer_held_out": clip.info or None}
    if fid_space is not None:
        ref_paths, ref_themes, ref_objects, ref_desc = reference
        ref_feats = []
        for i in tqdm(range(0, len(ref_paths), 256), desc="reference features", disable=not progress, mininterval=5):
            ref_feats.append(fid_space(load_images(ref_paths[i:i + 256], size=size)))
        ref_feats = torch.cat(ref_feats)
        out["fid"] = {"features": fid_space.name, "kind": fid_space.kind, "reference": ref_desc,
                      "reference_images_resized_to": size, "all_cells": {
                          "value": frechet_distance(ref_feats, feats), "generated": n, "reference": len(ref_paths)}}
    for target in targets:
        row = unlearncanvas_scores(table.style, table.object, target, domain)
        forget = target_mask(answer.themes, answer.objects, target, domain)
        row["forget_images"], row["retain_images"] = int(forget.sum()), int((~forget).sum())
        if clip is not None:
            row["clip_removal_accuracy"], _ = removal_accuracy(answer.themes, answer.objects, clip_theme.numpy(),
                                                               clip_object.numpy(), target, domain)
            row["clip_score_retained"] = float(per_image[~forget].mean())
            row["clip_score_forget"] = float(per_image[forget].mean())
        if fid_space is not None:
            ref_forget = target_mask(ref_themes, ref_objects, target, domain)
            row["fid"] = frechet_distance(ref_feats[torch.from_numpy(~ref_forget)], feats[torch.from_numpy(~forget)])
            row["fid_generated"], row["fid_reference"] = int((~forget).sum()), int((~ref_forget).sum())
        out["targets"].append(row)
    out["summary"] = summarize(out["targets"])
    return out


def summarize(rows: Sequence[dict]) -> dict:
    """Means over style targets and over object targets, as the UnlearnCanvas table reports them."""
    summary: dict = {}
    for kind in ("style", "object"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            summary[kind] = {k: float(np.mean([r[k] for r in sel])) for k in ("UA", "IRA", "CRA")}
            for k in ("clip_removal_accuracy", "clip_score_retained"):
                if all(k in r for r in sel):
                    summary[kind][k] = float(np.mean([r[k] for r in sel]))
            summary[kind]["targets"] = len(sel)
    fids = [r["fid"] for r in rows if "fid" in r]
    if fids:
        summary["fid"] = float(np.mean(fids))
    return summary


# --------------------------------------------------------------------------- outputs
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def grid_image(answer, domain: Domain, seed: int, targets: Sequence[str], title: str, thumb: int = 48):
    from PIL import Image

    from benchmarks.unlearncanvas.report import labelled_grid

    sel = [i for i in range(len(answer)) if answer.seeds[i] == seed]
    cells = np.zeros((len(domain.themes), len(domain.objects), thumb, thumb, 3), np.uint8)
    for i in sel:
        with Image.open(answer.paths[i]) as im:
            cells[answer.themes[i], answer.objects[i]] = np.asarray(im.convert("RGB").resize((thumb, thumb),
                                                                                            Image.BICUBIC))
    marked_rows = [domain.themes.index(t) for t in targets if t in domain.themes]
    marked_cols = [domain.objects.index(t) for t in targets if t in domain.objects]
    return labelled_grid(cells, domain.themes, domain.objects, scale=2 if len(domain.themes) <= 20 else 1, marked_rows=marked_rows,
                         marked_cols=marked_cols, title=title)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        from benchmarks.unlearncanvas.leaderboard import main as merge_main

        return merge_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as err:  # every project error type is a ValueError with a one-line message
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"unlearncanvas-eval: error: {msg}", file=sys.stderr)
        return 2


def run(args) -> int:
    from accelerate import Accelerator

    from benchmarks.minicanvas_base import hardware

    t_start = time.perf_counter()
    domain = DOMAINS[args.domain]
    steps, guidance = SAMPLER_DEFAULTS[domain.name]
    steps = args.steps if args.steps is not None else steps
    guidance = args.guidance if args.guidance is not None else guidance
    seeds = args.seeds or list(domain.seeds)
    if steps < 1 or args.batch_size < 1 or len(set(seeds)) != len(seeds):
        raise UsageError("--steps and --batch-size must be positive and --seeds distinct")
    if args.score_only and args.artifact:
        raise UsageError("--score-only loads no model; drop --artifact or --score-only (use --label to name the row)")
    ext = args.ext or ("png" if domain.name == "minicanvas" else "jpg")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, expected a folder")
    answer_dir = Path(args.answer_set) if args.answer_set else out / "answer_set"
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = torch.device(args.device) if args.device else accelerator.device
    progress = not args.no_progress and accelerator.is_local_main_process
    dtype = getattr(torch, args.dtype)

    artifact_meta = None
    if args.artifact:
        from erase.artifacts import read_metadata

        artifact_meta = read_metadata(args.artifact)
    targets = _targets(args, domain, artifact_meta)
    # every judge and the reference set before any generation: bad inputs fail in seconds
    judge, judge_name = _classifier(args, domain, device)
    clip = _clip(args, domain, device)
    fid_space = _fid_space(args, clip, device)
    with tempfile.TemporaryDirectory(prefix="unlearncanvas-eval-") as tmp:
        reference = _reference(args, domain, Path(tmp)) if accelerator.is_main_process else None
        settings = SamplerSettings(steps=steps, guidance_scale=guidance, size=args.size,
                                   photo_phrase=args.photo_phrase, ext=ext, seeds=list(seeds))
        gen_info: dict = {"generated": 0, "seconds": 0.0}
        if args.score_only:
            model_info = {"base": None, "artifact": None, "method": None, "note": "score-only: answer set given"}
        else:
            pipe, model_info, _ = _load_model(args, device, dtype)
            model_id = str(model_info["base"]) + (f"@{model_info['sha256_16']}" if model_info.get("sha256_16") else "")
            if model_info["artifact"]:  # its weights, not erase.json (which holds run times): a rerun that
                # reproduces the same weights reuses the answer set, any other artifact is refused
                model_id += f"+{model_info['artifact']}@{model_info['weights_sha256_16']}"
            if accelerator.is_main_process:
                check_answer_folder(answer_dir, settings, model_id)
            accelerator.wait_for_everyone()
            gen_info = generate_answer_set(pipe, answer_dir, domain, settings, model_id, args.batch_size,
                                           accelerator.process_index, accelerator.num_processes, progress=progress)
            gen_info["processes"] = accelerator.num_processes
            accelerator.wait_for_everyone()
            del pipe
        if not accelerator.is_main_process:
            return 0
        answer = read_answer_set(answer_dir, domain, seeds, ext)
        t_score = time.perf_counter()
        scores = score(answer, domain, judge, clip, fid_space, reference, targets, args.photo_phrase, progress)
        score_seconds = time.perf_counter() - t_score
    efficiency = efficiency_from_artifact(args.artifact)
    label = args.label or (model_info.get("method") if model_info.get("method") else "base")
    results = {
        "schema": SCHEMA, "label": label, "domain": domain.name, "model": model_info,
        "targets": scores["targets"], "summary": scores["summary"],
        "answer_set": {"folder": str(answer_dir.absolute()), "images": len(answer),
                       "grid": f"{len(domain.themes)} themes (photo theme included) x {len(domain.objects)} objects "
                               f"x {len(seeds)} seeds",
                       "prompt_template": domain.prompt("{style}", "{object}"), "photo_phrase": args.photo_phrase,
                       "seeds": list(seeds), "sampler": f"{settings.scheduler} eta {settings.eta}", "steps": steps,
                       "guidance_scale": guidance, "size": args.size, "ext": ext, **gen_info},
        "classifier": {"name": judge_name, "images": len(answer),
                       "images_per_theme": scores["accuracy"]["images_per_theme"],
                       "images_per_object": scores["accuracy"]["images_per_object"]},
        "accuracy": scores["accuracy"], "clip": scores.get("clip"), "fid": scores.get("fid"),
        "efficiency": efficiency,
        "hardware": hardware(), "torch": torch.__version__,
        "seconds": {"generation": gen_info.get("seconds"), "scoring": round(score_seconds, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
    }
    from benchmarks.unlearncanvas.report import results_markdown

    out.mkdir(parents=True, exist_ok=True)
    grid_seed = args.grid_seed if args.grid_seed is not None else seeds[0]
    if grid_seed not in seeds:
        raise UsageError(f"--grid-seed {grid_seed} is not one of --seeds")
    shown = targets if len(targets) <= 2 else []
    title = f"{label} on {domain.name}, seed {grid_seed}: rows = style prompt, columns = object prompt" + (
        f"; red = target {', '.join(shown)}" if shown else "")
    grid = grid_image(answer, domain, grid_seed, shown, title)
    png = tempfile.NamedTemporaryFile(dir=out, prefix=".grid", suffix=".png", delete=False)
    png.close()
    grid.save(png.name)
    _write_atomic(out / RESULTS_JSON, json.dumps(results, indent=1).encode())
    _write_atomic(out / RESULTS_MD, results_markdown(results).encode())
    os.replace(png.name, out / GRID_PNG)
    _print_summary(results, out)
    return 0


def _print_summary(results: dict, out: Path) -> None:
    a = results["answer_set"]
    print(f"{results['label']} on {results['domain']}: {a['images']} images ({a['generated']} generated now), "
          f"{a['steps']} DDIM steps, guidance {a['guidance_scale']}; judged by {results['classifier']['name']}")
    for kind, s in results["summary"].items():
        if kind == "fid":
            continue
        extra = f", CLIP removal {s['clip_removal_accuracy']:.1%}" if "clip_removal_accuracy" in s else ""
        print(f"  {kind} targets ({s['targets']}): UA {s['UA']:.1%}  IRA {s['IRA']:.1%}  CRA {s['CRA']:.1%}{extra}")
    if results.get("fid"):
        print(f"  {results['fid']['features']}: mean over targets {results['summary']['fid']:.4f}")
    print(f"  {results['seconds']['total']:.0f} s on {results['hardware']}; wrote {out / RESULTS_JSON}, "
          f"{out / RESULTS_MD}, {out / GRID_PNG}")


if __name__ == "__main__":
    sys.exit(main())
