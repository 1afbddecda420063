"""Merge several ``results.json`` into one UnlearnCanvas leaderboard: table, JSON and plot.

    unlearncanvas-eval merge outputs/uc-*/results.json --out outputs/leaderboard

Rows are methods (the results' ``label``); a method evaluated on several targets (one erased
model per target, as the protocol asks) is averaged over its style targets and over its object
targets, as in the UnlearnCanvas table. Results from different domains, or whose FID used
different feature spaces, are refused rather than mixed.
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
from benchmarks.unlearncanvas.report import RESULTS_JSON

COLUMNS = ("St. UA", "St. IRA", "St. CRA", "Obj. UA", "Obj. IRA", "Obj. CRA", "FID", "St. ASR", "Obj. ASR",
           "Time (s)", "Mem (GB)", "Stor. (GB)")


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


def load_results(paths: Sequence[str | Path]) -> list[dict]:
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
        check_keys(r, p)
        r["_path"] = str(p)
        out.append(r)
    domains = {r["domain"] for r in out}
    if len(domains) > 1:
        raise MergeError(f"results come from different domains ({', '.join(sorted(domains))})")
    fids = {r["fid"]["features"] for r in out if r.get("fid")}
    if len(fids) > 1:
        raise MergeError(f"FID feature spaces differ, the numbers are not comparable: {' | '.join(sorted(fids))}")
    attacks = {attack_key(r) for r in out if r.get("robustness")}
    if len(attacks) > 1:
        raise MergeError("results were attacked with different attacks or budgets, their ASR is not comparable: "
                         + " | ".join(sorted(attacks)))
    return out


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
        row["FID"] = summary.get("fid")
        for kind, prefix in (("style", "St."), ("object", "Obj.")):
            asr = [t["ASR"] for r in group for t in r["targets"] if t["kind"] == kind and t.get("ASR") is not None]
            row[f"{prefix} ASR"] = 100 * float(np.mean(asr)) if asr else None
        row["Time (s)"], row["Mem (GB)"], row["Stor. (GB)"] = mean("time_s"), mean("memory_gb"), mean("storage_gb")
        rows.append(row)
    return rows


def leaderboard_markdown(rows: Sequence[dict], results: Sequence[dict]) -> str:
    def cell(v, col):
        if v is None:
            return ""
        return f"{v:.4f}" if col in ("FID", "Stor. (GB)", "Mem (GB)") else f"{v:.2f}" if col != "Time (s)" else f"{v:.1f}"

    r0 = results[0]
    lines = ["| Method | " + " | ".join(COLUMNS) + " | targets (style/object) |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(cell(row[c], c) for c in COLUMNS)
                     + f" | {row['St. targets']}/{row['Obj. targets']} |")
    fid = r0["fid"]["features"] if r0.get("fid") else "not measured"
    attacked = next((r for r in results if r.get("robustness")), None)
    asr = "not measured" if attacked is None else (
        f"{attack_key(attacked)}, judged by {attacked['robustness']['judge']}, pre-attack successes included "
        "(blank = not attacked)")
    lines += ["", f"Domain {r0['domain']}; UA/IRA/CRA in % by {r0['classifier']['name']} over "
              f"{r0['answer_set']['grid']} per model; FID: {fid}; ASR (%, lower is more robust): {asr}; efficiency "
              f"from each artifact's erase.json (blank = no artifact). Sources: {', '.join(r['_path'] for r in results)}."]
    return "\n".join(lines) + "\n"


def leaderboard_plot(rows: Sequence[dict], width: int = 900) -> Image.Image:
    """Grouped bars of the six accuracy columns and, when measured, the ASR columns (0-100 %), one colour per method."""
    cols = COLUMNS[:6] + tuple(c for c in ("St. ASR", "Obj. ASR") if any(row[c] is not None for row in rows))
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    font = ImageFont.load_default()
    top, bottom, left, plot_h = 30, 40, 40, 240
    legend_h = 16 * len(rows) + 10
    img = Image.new("RGB", (width, top + plot_h + bottom + legend_h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), "UnlearnCanvas accuracies (%, higher is better)" + (", ASR (%, lower is more robust)" if len(cols) > 6
           else "") + " per method", fill="black", font=font)
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
        extra = f"  FID {row['FID']:.4f}" if row["FID"] is not None else ""
        d.text((left + 16, y), f"{row['method']}{extra}", fill="black", font=font)
    return img


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearncanvas-eval merge",
                                     description="Merge results.json files into one leaderboard table and plot.")
    parser.add_argument("results", nargs="+", help="results.json files or the folders holding them")
    parser.add_argument("--out", required=True, help="folder for leaderboard.md, leaderboard.json, leaderboard.png")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
        rows = leaderboard_rows(results)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise MergeError(f"--out {out} is a file, expected a folder")
        md = leaderboard_markdown(rows, results)
        plot = leaderboard_plot(rows)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in (("leaderboard.md", md.encode()),
                           ("leaderboard.json", json.dumps({"columns": list(COLUMNS), "rows": rows}, indent=1).encode())):
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
