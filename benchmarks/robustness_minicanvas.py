"""Benchmark: adversarial robustness on the embedded world, and the calibration that gives it meaning (issue 11).

Three sections, all with the evaluation's own attack (``unlearncanvas-eval --attack``: the MiniCanvas
defaults of ``benchmarks.unlearncanvas.protocol.ATTACK_DEFAULTS``, judged by the shipped MiniCanvas
classifier on DDIM 25 / CFG 5 images, target images drawn by the un-erased base model):

1. oracle: on the un-erased model, each calibration target's prompts with its word deleted, and the
   word's own token ids placed in the attack's slots, at the ``prefix`` and at the ``concept``
   position: where can any token sequence bring the concept back at all?
2. calibration: the same prompts attacked towards the target (discrete and soft); a high recovery
   rate is what makes a low ASR on an erased model mean robustness rather than a weak attack.
3. erased models: pre-ASR and ASR of the base model, ESD, SalUn and AdvUnlearn (``erase-concept``
   defaults with the embedded presets, seed 0) on style and object targets.

    python -m benchmarks.robustness_minicanvas --threads 2           # about an hour on 2 CPU cores
    python -m benchmarks.robustness_minicanvas --resume              # after a kill: finished rows are kept
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks.unlearncanvas.config import EvalConfig
from benchmarks.unlearncanvas.metrics import wilson_interval
from benchmarks.unlearncanvas.robustness import attack_prompts, attack_target, classifier_judge, without_target_word
from erase.artifacts import read_record
from erase.attacks.tokens import encode_with_tokens
from erase.cli import erase_concept
from erase.concepts import MINICANVAS
from erase.loading import load_erased_pipeline
from erase.provenance import folder_hash, hardware, relative_path, versions
from pipelines.judges import MINICANVAS_CLASSIFIER_DIR, MiniCanvasClassifier
from pipelines.stable_diffusion import EMBEDDED_MODEL_DIR, generate, load_pipeline
from pipelines.threads import restore_threads, use_threads

RESULTS_FILE = Path(__file__).parent / "results" / "robustness_minicanvas.json"
JUDGE = "MiniCanvas classifier (pipelines/assets/minicanvas_classifier)"
RANDOM_DRAWS = 2  # draws of random tokens per prompt for the chance rate of the oracle section


def attack_config(kind: str):
    """The evaluation's default attack on the embedded world (what ``--attack KIND`` uses)."""
    return EvalConfig(attack=kind, targets=["Candy"], answer_dir="unused").resolved().attack_config()


def oracle(pipe, classifier, target: str, steps: int, guidance: float) -> dict[str, Any]:
    """Recovery rate of the word-deleted prompts with the target's own word in the slots, per insertion."""
    config = attack_config("unlearndiffatk")
    items = attack_prompts(MINICANVAS, target, list(MINICANVAS.seeds))
    prompts, at = map(list, zip(*(without_target_word(p, MINICANVAS, target) for p, _ in items)))
    seeds = [s for _, s in items]
    word = pipe.tokenizer(MINICANVAS.phrase(target), add_special_tokens=False).input_ids
    tokens = torch.tensor([(word + [pipe.tokenizer.eos_token_id] * config.tokens)[:config.tokens]] * len(prompts))
    judge = classifier_judge(classifier, MINICANVAS, target)
    out = {"target": target, "word_ids": word, "slots": tokens[0].tolist(), "prompts": len(prompts)}
    for insertion, offsets in (("prefix", [0] * len(prompts)), ("concept", at)):
        embeds = encode_with_tokens(pipe.tokenizer, pipe.text_encoder, prompts, tokens, offsets)
        images = generate(pipe, None, seeds, steps=steps, guidance_scale=guidance, prompt_embeds=embeds)
        out[insertion] = float(judge(images).mean())
    out["deleted_word_plain"] = float(judge(generate(pipe, prompts, seeds, steps=steps, guidance_scale=guidance)).mean())
    out["random_tokens"] = random_tokens(pipe, judge, prompts, seeds, at, config.tokens, steps, guidance)
    return out


def random_tokens(pipe, judge, prompts: list[str], seeds: list[int], at: list[int], k: int, steps: int,
                  guidance: float, draws: int = RANDOM_DRAWS) -> float:
    """Chance: the share of images judged the target with k uniformly random tokens at the concept position,
    per draw (an attack judged n times could succeed by luck in about 1 - (1 - this)^n of the prompts)."""
    generator, hits = torch.Generator().manual_seed(0), []
    for _ in range(draws):
        tokens = torch.randint(0, len(pipe.tokenizer) - 2, (len(prompts), k), generator=generator)  # no SOT/EOT
        embeds = encode_with_tokens(pipe.tokenizer, pipe.text_encoder, prompts, tokens, at)
        hits.append(judge(generate(pipe, None, seeds, steps=steps, guidance_scale=guidance, prompt_embeds=embeds)))
    return float(np.concatenate(hits).mean())


def erased_model(method: str, target: str, work: Path) -> tuple[Any, dict[str, Any]]:
    """The artifact of ``method`` on ``target`` (made once, kept in ``work``) loaded, with its settings."""
    folder = work / f"{method}-{target.lower()}"
    if not (folder / "erase.json").is_file():
        erase_concept(method, target, output=folder, overwrite=True, progress=False)
    record = read_record(folder)
    settings = {"method": method, "artifact": relative_path(folder), "artifact_sha256_16": folder_hash(folder),
                "preset": record.preset, "steps": record.train["steps"],
                "config": record.config, "seed": record.seed, "erase_seconds": record.cost["seconds"]}
    return load_erased_pipeline(folder, progress=False), settings


def rate_with_interval(row: dict[str, Any]) -> str:
    """'50 % [30-70]': the success rate of a row and its 95 % Wilson interval over the row's prompts."""
    n = int(row["prompts"])
    low, high = wilson_interval(round(row["asr"] * n), n)
    return f"{100 * row['asr']:.0f} % [{100 * low:.0f}-{100 * high:.0f}]"


def table(report: dict[str, Any]) -> str:
    """The README tables: oracle and calibration rows, then pre-ASR / ASR per model and target."""
    lines = ["| calibration target | word in slots: prefix / concept | random tokens (chance per draw) "
             "| discrete: recovered (s) | soft: recovered (s) |", "|---|---|---|---|---|"]
    for o in report["oracle"]:
        rows = {r["attack"]: r for r in report["calibration"] if r["target"] == o["target"]}
        cells = [f"{100 * rows[k]['asr']:.0f} % of {rows[k]['prompts']} ({rows[k]['seconds']:.0f})" if k in rows
                 else "" for k in ("unlearndiffatk", "soft")]
        chance = f"{100 * o['random_tokens']:.1f} %" if "random_tokens" in o else ""
        lines.append(f"| {o['target']} | {100 * o['prefix']:.0f} % / {100 * o['concept']:.0f} % | {chance} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| model | target | prompts | pre-ASR | ASR discrete [95 % CI] (s) | ASR soft [95 % CI] (s) |",
              "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["model"], r["target"]) for r in report["erased"]))
    targets = list(dict.fromkeys(target for _, target in keys))
    for key in sorted(keys, key=lambda k: targets.index(k[1])):  # by target, models in the order they ran
        rows = {r["attack"]: r for r in report["erased"] if (r["model"], r["target"]) == key}
        first = next(iter(rows.values()))
        cells = [f"{rate_with_interval(rows[k])} ({rows[k]['seconds']:.0f})" if k in rows else ""
                 for k in ("unlearndiffatk", "soft")]
        lines.append(f"| {key[0]} | {key[1]} | {first['prompts']} | {100 * first['pre_asr']:.0f} % | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    with restore_threads():  # called in-process too (tests, notebooks): the caller keeps its thread count
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-targets", nargs="+", default=["Candy", "Fire", "Neon", "Fish", "Star"])
    parser.add_argument("--targets", nargs="+", default=["Candy", "Winter", "Fish", "Star"],
                        help="targets of the erased-model table (Winter and Star: used by no earlier benchmark)")
    parser.add_argument("--methods", nargs="+", default=["esd", "salun", "advunlearn"])
    parser.add_argument("--attacks", nargs="+", default=["unlearndiffatk", "soft"])
    parser.add_argument("--prompts", type=int, default=20, help="prompts per target in the erased-model table "
                        "(the first N, as --attack-prompts; default 20)")
    parser.add_argument("--calibration-prompts", type=int, default=None, help="default: all 50 (55 for objects)")
    parser.add_argument("--timing-target", default="Candy", help="a target whose 50 prompts are all attacked on "
                        "an erased model, for the time of one target's attack ('' to skip)")
    parser.add_argument("--timing-method", default="esd")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the project's default)")
    parser.add_argument("--work", default="runs/robustness_minicanvas", help="artifacts of the erased models")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier, interrupted run")
    parser.add_argument("--results-file", default=str(RESULTS_FILE))
    parser.add_argument("--table", action="store_true", help="print the README tables of the results file and stop")
    args = parser.parse_args(argv)
    out = Path(args.results_file)
    if args.table:
        print(table(json.loads(out.read_text())), end="")
        return 0
    pipe, classifier = load_pipeline(progress=False), MiniCanvasClassifier.from_pretrained()
    threads = use_threads(args.threads, sum(p.numel() for p in pipe.unet.parameters()), check_load=False)
    steps, guidance = attack_config("unlearndiffatk").judge_steps, attack_config("unlearndiffatk").judge_guidance
    report: dict[str, Any] = {"oracle": [], "calibration": [], "erased": []}
    if args.resume and out.is_file():
        report.update({k: v for k, v in json.loads(out.read_text()).items() if k in (*report, "timing")})
    report.update({
        "benchmark": "UnlearnDiffAtk on the embedded world: oracle, calibration (un-erased model, target word "
                     "deleted), pre-ASR / ASR of base, ESD, SalUn and AdvUnlearn",
        "model": "minicanvas-sd", "model_sha256_16": folder_hash(EMBEDDED_MODEL_DIR), "judge": JUDGE,
        "classifier_sha256_16": folder_hash(MINICANVAS_CLASSIFIER_DIR),
        "attack": {k: attack_config(k).__dict__ for k in args.attacks},
        "sampler": f"DDIM {steps} steps, CFG {guidance} (judged and target images)", "seeds": list(MINICANVAS.seeds),
        "prompt_order": "seed-major, then label order (benchmarks.unlearncanvas.robustness.attack_prompts)",
        "erased_prompts": args.prompts, "threads": threads, "hardware": hardware(), "versions": versions()})
    t0 = time.time()

    def save() -> None:
        report["seconds_this_run"] = round(time.time() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.rename(out)

    def have(section: str, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in report[section])

    for target in args.calibration_targets:
        if not have("oracle", target=target) or not any("random_tokens" in o for o in report["oracle"]
                                                         if o["target"] == target):
            report["oracle"] = [o for o in report["oracle"] if o["target"] != target]
            report["oracle"].append(oracle(pipe, classifier, target, steps, guidance))
            o = report["oracle"][-1]
            print(f"oracle {target}: word in the slots, prefix {o['prefix']:.0%}, concept {o['concept']:.0%}", flush=True)
            save()
        for kind in args.attacks:
            if have("calibration", target=target, attack=kind):
                continue
            row = attack_target(pipe, pipe, MINICANVAS, target, classifier, attack_config(kind), kind,
                                list(MINICANVAS.seeds), (steps, guidance), args.calibration_prompts,
                                calibrate=True, judge_name=JUDGE)
            report["calibration"].append({**row, "attack": kind, "model": "base (un-erased)",
                                          "torch_threads": torch.get_num_threads()})
            print(f"calibration {target:8s} {kind:15s} recovered {row['asr']:.0%} of {row['prompts']} "
                  f"({row['seconds']:.0f} s)", flush=True)
            save()
    for target in args.targets:
        models = [("base", None)] + [(m, m) for m in args.methods]
        for name, method in models:
            if all(have("erased", model=name, target=target, attack=k) for k in args.attacks):
                continue
            model, settings = (pipe, {"method": None}) if method is None else erased_model(method, target,
                                                                                          Path(args.work))
            for kind in args.attacks:
                if have("erased", model=name, target=target, attack=kind):
                    continue
                row = attack_target(model, pipe, MINICANVAS, target, classifier, attack_config(kind), kind,
                                    list(MINICANVAS.seeds), (steps, guidance), args.prompts, judge_name=JUDGE)
                report["erased"].append({**row, "attack": kind, "model": name, "erase": settings,
                                         "torch_threads": torch.get_num_threads()})  # rows of a --resume may differ
                print(f"{name:6s} {target:8s} {kind:15s} pre-ASR {row['pre_asr']:.0%} ASR {row['asr']:.0%} "
                      f"({row['seconds']:.0f} s)", flush=True)
                save()
    if args.timing_target and not report.get("timing"):
        # the worst case of the acceptance: every prompt of a target attacked to the end of the budget
        model, settings = erased_model(args.timing_method, args.timing_target, Path(args.work))
        row = attack_target(model, pipe, MINICANVAS, args.timing_target, classifier, attack_config("unlearndiffatk"),
                            "unlearndiffatk", list(MINICANVAS.seeds), (steps, guidance), None, judge_name=JUDGE)
        report["timing"] = {k: row[k] for k in ("target", "prompts", "pre_asr", "asr", "seconds")}
        report["timing"].update(model=args.timing_method, attack="unlearndiffatk", torch_threads=torch.get_num_threads())
        print(f"timing: {args.timing_method} {args.timing_target}, {row['prompts']} prompts, discrete: "
              f"{row['seconds']:.0f} s (ASR {row['asr']:.0%})", flush=True)
        save()
    print(table(report), end="")
    report["summary_success_rates"] = {"calibration_discrete_mean": float(np.mean(
        [r["asr"] for r in report["calibration"] if r["attack"] == "unlearndiffatk"] or [float("nan")]))}
    save()
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
