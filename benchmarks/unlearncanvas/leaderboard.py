"""Merge several ``results.json`` into one UnlearnCanvas leaderboard: table, JSON and plot.

    unlearncanvas-eval merge outputs/uc-*/results.json --out outputs/leaderboard

Rows are methods (the results' ``label``); a method evaluated on several targets (one erased
model per target, as the protocol asks) is averaged over its style targets and over its object
targets, as in the UnlearnCanvas table (FID too: a style column and an object column, never one
mean that would weight 50 styles against 20 objects). Two numbers measured differently never share
a table: every result's ``comparable`` record (domain, grid, seeds, sampler, and the content hashes
of the classifier, CLIP, FID features and reference set, and the attack's settings) must agree, or
the merge is refused with one line naming the first difference. The same model and target twice,
and subset runs (without ``--allow-subset``), are refused too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.unlearncanvas.metrics import summarize
from benchmarks.unlearncanvas.report import RESULTS_JSON, subset_text
from erase.provenance import relative_path

COLUMNS = ("St. UA", "St. IRA", "St. CRA", "Obj. UA", "Obj. IRA", "Obj. CRA", "St. CLIP rm.", "Obj. CLIP rm.",
           "St. FID", "Obj. FID", "St. ASR", "Obj. ASR", "Time (s)", "Mem (GB)", "Stor. (GB)")
# what must agree, in the order a difference is reported; (key in ``comparable``, its name in the message)
COMPARED = (("domain", "domain"), ("themes", "themes"), ("objects", "objects"), ("seeds", "seeds"),
            ("sampler.scheduler", "scheduler"), ("sampler.eta", "DDIM eta"), ("sampler.steps", "sampler steps"),
            ("sampler.guidance_scale", "guidance scale"), ("sampler.image_size", "image size"),
            ("sampler.prompt_template", "prompt template"), ("sampler.photo_phrase", "photo phrase"),
            ("classifier_sha256_16", "classifier weights"), ("clip_sha256_16", "CLIP weights"),
            ("fid_features_sha256_16", "FID feature weights"), ("fid_reference_sha256_16", "FID reference set"),
            ("attack", "attack settings"))
OPTIONAL = ("clip_sha256_16", "fid_features_sha256_16", "fid_reference_sha256_16", "attack")  # blank when absent


# What the table reads of each results.json: top-level keys, keys inside them, keys of every target row.
REQUIRED = ("label", "domain", "targets", "answer_set", "classifier")
NESTED = {"answer_set": ("images", "grid"), "classifier": ("name",), "fid": ("features",)}
TARGET_KEYS = ("target", "kind", "UA", "IRA", "CRA")


class MergeError(ValueError):
    """Results that cannot be merged into one table."""


def check_keys(r: dict, path: Path) -> None:
    """Refuse a hand-edited or truncated results.json with one line naming the file and the first missing key."""
    for key in REQUIRED:
        if key not in r:
            raise MergeError(f"{path} lacks key {key!r}")
    for key, inner in NESTED.items():
        if r.get(key) is None and key == "fid":
            continue
        if not isinstance(r[key], dict):
            raise MergeError(f"{path}: {key!r} is not an object")
        for k in inner:
            if k not in r[key]:
                raise MergeError(f"{path}: {key!r} lacks key {k!r}")
    if not isinstance(r["targets"], list):
        raise MergeError(f"{path}: 'targets' is not a list")
    for i, row in enumerate(r["targets"]):
        missing = [k for k in TARGET_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise MergeError(f"{path}: targets[{i}] lacks key {missing[0]!r}")


def load_results(paths: Sequence[str | Path], allow_subset: bool = False) -> list[dict]:
    """Read and check results.json files: keys, comparability, duplicates, subsets (``MergeError``: one line)."""
    if not paths:
        raise MergeError("no results.json given")
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / RESULTS_JSON
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise MergeError(f"cannot read {p}: {err}") from None
        if not isinstance(r, dict) or r.get("schema", "").split("/")[0] != "erase.unlearncanvas-eval":
            raise MergeError(f"{p} is not an unlearncanvas-eval results.json")
        if not isinstance(r.get("comparable"), dict):
            raise MergeError(f"{p} records no 'comparable' settings (written before schema 2); score its answer "
                             f"set again with unlearncanvas-eval --score-only")
        check_keys(r, p)
        r["_path"] = relative_path(p)
        subset = r["answer_set"].get("subset")
        if subset and not allow_subset:
            raise MergeError(f"{r['_path']} is a subset run ({subset_text(subset)}), not the protocol; "
                             f"pass --allow-subset to merge smoke tests")
        out.append(r)
    shared_settings(out)
    seen: dict[tuple[str, str], str] = {}
    for r in out:
        for row in r["targets"]:
            key = (r["model"].get("key") or r["_path"], row["target"])
            if key in seen:
                raise MergeError(f"{r['_path']} repeats target {row['target']} of model {key[0]} "
                                 f"(already in {seen[key]}); each model and target counts once")
            seen[key] = r["_path"]
    return out


def _value(comparable: dict, key: str):
    for part in key.split("."):
        comparable = comparable.get(part) if isinstance(comparable, dict) else None
    return comparable


def shared_settings(results: Sequence[dict]) -> dict:
    """The settings every result shares (``COMPARED``); the first difference raises ``MergeError``.

    Optional judges (CLIP, FID, attack) are compared where present: a result without them leaves
    their columns blank.
    """
    shared: dict = {}
    for r in results:
        for key, name in COMPARED:
            value = _value(r["comparable"], key)
            if value is None and key in OPTIONAL:
                continue
            if key not in shared:
                shared[key] = (value, r["_path"])
            elif shared[key][0] != value:
                first, path = shared[key]
                raise MergeError(f"{name} differ: {path} has {_short(first)}, {r['_path']} has {_short(value)}; "
                                 f"results measured differently never share a table")
    return {k: v for k, (v, _) in shared.items()}


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def attack_key(result: dict) -> str:
    """What makes two ASR figures comparable: the attack (discrete or soft) and every setting of its config."""
    rob = result["robustness"]
    return f"{rob['attack']} " + json.dumps(rob["config"], sort_keys=True)


def leaderboard_rows(results: Sequence[dict]) -> list[dict]:
    """One row per label: the UnlearnCanvas columns (accuracies in %), sources and sample counts."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in results):
        group = [r for r in results if r["label"] == label]
        summary = summarize([t for r in group for t in r["targets"]])
        eff = [r["efficiency"] for r in group if r.get("efficiency")]

        def mean(key: str) -> float | None:
            vals = [e[key] for e in eff if e.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        row = {"method": label, "results": len(group), "images": sum(r["answer_set"]["images"] for r in group)}
        for kind, prefix in (("style", "St."), ("object", "Obj.")):
            for k in ("UA", "IRA", "CRA"):
                row[f"{prefix} {k}"] = 100 * summary[kind][k] if kind in summary else None
            row[f"{prefix} targets"] = summary.get(kind, {}).get("targets", 0)
        for kind, prefix in (("style", "St."), ("object", "Obj.")):
            part = summary.get(kind, {})
            clip = part.get("clip_removal_accuracy")
            base = part.get("clip_removal_accuracy_base")
            row[f"{prefix} CLIP rm."] = None if clip is None else 100 * clip
            row[f"{prefix} CLIP rm. base"] = None if base is None else 100 * base
            row[f"{prefix} FID"] = part.get("fid")
        for kind, prefix in (("style", "St."), ("object", "Obj.")):
            asr = [t["ASR"] for r in group for t in r["targets"] if t["kind"] == kind and t.get("ASR") is not None]
            row[f"{prefix} ASR"] = 100 * float(np.mean(asr)) if asr else None
        row["Time (s)"], row["Mem (GB)"], row["Stor. (GB)"] = mean("time_s"), mean("memory_gb"), mean("storage_gb")
        rows.append(row)
    return rows


def leaderboard_markdown(rows: Sequence[dict], results: Sequence[dict]) -> str:
    """The table, then a footnote with every setting the rows share (and the judges' content hashes)."""
    def cell(row, col):
        v = row[col]
        if v is None:
            return ""
        if col.endswith("CLIP rm."):
            base = row[f"{col} base"]
            return f"{v:.2f}" + ("" if base is None else f" ({base:.2f})")
        return f"{v:.4f}" if col.endswith("FID") or col in ("Stor. (GB)", "Mem (GB)") else (
            f"{v:.2f}" if col != "Time (s)" else f"{v:.1f}")

    shared = shared_settings(results)
    r0 = results[0]
    lines = ["| Method | " + " | ".join(COLUMNS) + " | targets (style/object) |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(cell(row, c) for c in COLUMNS)
                     + f" | {row['St. targets']}/{row['Obj. targets']} |")
    with_clip = next((r for r in results if r.get("clip")), None)
    with_fid = next((r for r in results if r.get("fid")), None)
    attacked = next((r for r in results if r.get("robustness")), None)
    sampler = {k.split(".", 1)[1]: v for k, v in shared.items() if k.startswith("sampler.")}
    clip = "not measured" if with_clip is None else (
        f"{with_clip['clip']['scorer']} (weights {shared.get('clip_sha256_16')}), zero-shot over the prompt grid; "
        "in brackets the un-erased base model's value for the same targets and settings")
    fid = "not measured" if with_fid is None else (
        f"{with_fid['fid']['features']} (weights {shared.get('fid_features_sha256_16')}), reference "
        f"{with_fid['fid']['reference']} (content {shared.get('fid_reference_sha256_16')}), mean over the targets of "
        "each kind")
    asr = "not measured" if attacked is None else (
        f"{attack_key(attacked)}, judged by {attacked['robustness']['judge']}, pre-attack successes included "
        "(blank = not attacked)")
    subset = any(r["answer_set"].get("subset") for r in results)
    lines += ["", ("**Subset runs, not the protocol.** " if subset else "")
              + f"Shared by every row: domain {r0['domain']}; {r0['answer_set']['grid']} per model, seeds "
              f"{', '.join(map(str, shared['seeds']))}; {sampler['scheduler']} eta {sampler['eta']}, {sampler['steps']} "
              f"steps, guidance {sampler['guidance_scale']}, {sampler['image_size']} px, prompt "
              f"`{sampler['prompt_template']}` (photo theme '{sampler['photo_phrase']}'). UA/IRA/CRA in % by "
              f"{r0['classifier']['name']} (weights {shared['classifier_sha256_16']}). CLIP removal (%): {clip}. "
              f"FID: {fid}. ASR (%, lower is more robust): {asr}. Efficiency from each artifact's erase.json (blank = "
              f"no artifact). Sources: {', '.join(r['_path'] for r in results)}."]
    return "\n".join(lines) + "\n"


def leaderboard_plot(rows: Sequence[dict], width: int = 900) -> Image.Image:
    """Grouped bars of the six accuracy columns and, when measured, the ASR columns (0-100 %), one colour per method."""
    cols = COLUMNS[:6] + tuple(c for c in ("St. CLIP rm.", "Obj. CLIP rm.", "St. ASR", "Obj. ASR")
                               if any(row[c] is not None for row in rows))
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    font = ImageFont.load_default()
    top, bottom, left, plot_h = 30, 40, 40, 240
    legend_h = 16 * len(rows) + 10
    img = Image.new("RGB", (width, top + plot_h + bottom + legend_h), "white")
    d = ImageDraw.Draw(img)
    asr = any(c.endswith("ASR") for c in cols)
    d.text((left, 8), "UnlearnCanvas accuracies and CLIP removal (%, higher is better)"
           + (", ASR (%, lower is more robust)" if asr else "") + " per method", fill="black", font=font)
    group_w = (width - left - 10) / len(cols)
    bar_w = min(40, max(2, int((group_w - 16) / max(1, len(rows)))))
    for tick in range(0, 101, 25):
        y = top + plot_h - tick * plot_h / 100
        d.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        d.text((4, y - 6), str(tick), fill="black", font=font)
    for ci, col in enumerate(cols):
        x0 = left + ci * group_w + 8
        for ri, row in enumerate(rows):
            v = row[col]
            if v is None:
                continue
            h = v * plot_h / 100
            x = x0 + ri * bar_w
            d.rectangle([x, top + plot_h - h, x + bar_w - 2, top + plot_h], fill=palette[ri % len(palette)])
        d.text((x0, top + plot_h + 6), col, fill="black", font=font)
    for ri, row in enumerate(rows):
        y = top + plot_h + bottom + 16 * ri
        d.rectangle([left, y + 2, left + 10, y + 12], fill=palette[ri % len(palette)])
        extra = "".join(f"  {c} {row[c]:.4f}" for c in ("St. FID", "Obj. FID") if row[c] is not None)
        d.text((left + 16, y), f"{row['method']}{extra}", fill="black", font=font)
    return img


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearncanvas-eval merge",
                                     description="Merge results.json files into one leaderboard table and plot.")
    parser.add_argument("results", nargs="+", help="results.json files or the folders holding them")
    parser.add_argument("--out", required=True, help="folder for leaderboard.md, leaderboard.json, leaderboard.png")
    parser.add_argument("--allow-subset", action="store_true", help="merge subset runs (--themes/--objects/--seeds "
                        "smoke tests); the table then says so")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results, args.allow_subset)
        rows = leaderboard_rows(results)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise MergeError(f"--out {out} is a file, expected a folder")
        md = leaderboard_markdown(rows, results)
        plot = leaderboard_plot(rows)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in (("leaderboard.md", md.encode()),
                           ("leaderboard.json", json.dumps({"columns": list(COLUMNS), "rows": rows,
                                                    "shared": shared_settings(results)}, indent=1).encode())):
            tmp = out / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
        plot.save(out / ".leaderboard.png.tmp", format="PNG")
        os.replace(out / ".leaderboard.png.tmp", out / "leaderboard.png")
    except (ValueError, OSError) as err:
        print(f"unlearncanvas-eval merge: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(md, end="")
    print(f"wrote {out / 'leaderboard.md'}, {out / 'leaderboard.json'}, {out / 'leaderboard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
