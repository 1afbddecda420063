"""Pictures, tables and files of UnlearnCanvas results: the grid PNG, results.md, results.json."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.unlearncanvas.answer_set import AnswerSet
from erase.concepts import Domain


def labelled_grid(cells: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                  scale: int = 2, marked_rows: Sequence[int] = (), marked_cols: Sequence[int] = (),
                  title: str | None = None) -> Image.Image:
    """A picture of ``cells`` (rows, cols, H, W, 3) uint8 with row and column names.

    Marked rows or columns (the erased target) get a red frame, so a reader sees at once which
    cells should have lost the concept.
    """
    rows, cols, h, w, _ = cells.shape
    if rows != len(row_labels) or cols != len(col_labels):
        raise ValueError(f"grid is {rows}x{cols} but got {len(row_labels)} row and {len(col_labels)} column labels")
    font = ImageFont.load_default()
    ch, cw = h * scale, w * scale
    pad, left = 2, max(8 * max(map(len, row_labels)), 40)
    top = 16 + (16 if title else 0)
    canvas = Image.new("RGB", (left + cols * (cw + pad), top + rows * (ch + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        draw.text((left + j * (cw + pad) + 1, top - 14), label[: max(1, cw // 6)], fill="black", font=font)
    for i, label in enumerate(row_labels):
        draw.text((2, top + i * (ch + pad) + ch // 2 - 6), label, fill="black", font=font)
        for j in range(cols):
            tile = Image.fromarray(cells[i, j]).resize((cw, ch), Image.NEAREST)
            x, y = left + j * (cw + pad), top + i * (ch + pad)
            canvas.paste(tile, (x, y))
            if i in marked_rows or j in marked_cols:
                draw.rectangle([x - 1, y - 1, x + cw, y + ch], outline="red", width=1)
    return canvas


# --------------------------------------------------------------------------- results tables
def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _with_base(row: dict, key: str, fmt) -> str:
    """'97.50 (base 1.80)': a figure with the base model's value for the same target, when known."""
    value = fmt(row.get(key))
    return f"{value} (base {fmt(row[key + '_base'])})" if value and row.get(key + "_base") is not None else value


def subset_text(subset: dict) -> str:
    """'themes Candy, Fire; seeds 188': what a subset run kept of the protocol's grid."""
    return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in subset.items())


def results_markdown(results: dict) -> str:
    """The Markdown report of one ``unlearncanvas-eval`` run: what was measured, by what, on what."""
    a, m = results["answer_set"], results["model"]
    lines = [f"# UnlearnCanvas evaluation: {results['label']} ({results['domain']})", ""]
    if a.get("subset"):
        lines += [f"**Subset, not the protocol** ({subset_text(a['subset'])}): a smoke test; its figures are not "
                  f"comparable with the protocol's and `merge` refuses them without `--allow-subset`.", ""]
    model = m.get("base") or "(answer set given)"
    if m.get("artifact"):
        model += f" + artifact {m['artifact']} ({m.get('method')}, concept {m.get('concept')})"
    if m.get("key"):
        model += f"; identity {m['key']}"
    lines += [f"- model: {model}",
              f"- answer set: {a['images']} images, {a['grid']}; template `{a['prompt_template']}` "
              f"(photo theme: '{a['photo_phrase']}'); {a['sampler']}, {a['steps']} steps, guidance "
              f"{a['guidance_scale']}; seeds {', '.join(map(str, a['seeds']))}; {a['generated']} generated in this run; "
              f"settings from {a.get('settings_from', 'this run')}",
              f"- classifier: {results['classifier']['name']} ({results['classifier']['images_per_theme']} images "
              f"per theme, {results['classifier']['images_per_object']} per object)"]
    if results.get("clip"):
        c = results["clip"]
        lines.append(f"- CLIP: {c['scorer']}; zero-shot = {c['zero_shot']}; CLIP score = {c['clip_score']}; "
                     f"base-model figures: {c.get('baseline', {}).get('source', 'not computed')}")
    if results.get("fid"):
        f = results["fid"]
        lines.append(f"- FID: {f['features']}; reference: {f['reference']} (resized to {f['reference_images_resized_to']} "
                     f"px); all cells: {f['all_cells']['value']:.4f} ({f['all_cells']['generated']} vs "
                     f"{f['all_cells']['reference']} images)")
    e = results.get("efficiency")
    if e:
        lines.append(f"- efficiency ({e['source']}): time {_num(e['time_s'], 1)} s, peak memory {_num(e['memory_gb'], 3)} "
                     f"GB ({e.get('memory_kind')}), storage {_num(e['storage_gb'], 4)} GB")
    lines.append(f"- hardware: {results['hardware']}; torch {results['torch']}; {results['seconds']['total']:.0f} s total")
    lines += ["", "## Per target (%, FID lower is better; base = the un-erased model, same prompts, seeds and judges)",
              "", "| target | kind | UA (base) | IRA | CRA | CLIP removal (base) | CLIP score retained (base) | "
              "CLIP score forget (base) | FID |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["targets"]:
        lines.append(f"| {r['target']} | {r['kind']} | {_with_base(r, 'UA', _pct)} | {_pct(r['IRA'])} | "
                     f"{_pct(r['CRA'])} | {_with_base(r, 'clip_removal_accuracy', _pct)} | "
                     f"{_with_base(r, 'clip_score_retained', _num)} | {_with_base(r, 'clip_score_forget', _num)} | "
                     f"{_num(r.get('fid'), 4)} |")
    for kind, s in results["summary"].items():
        lines.append(f"| **mean of {s['targets']} {kind} targets** | {kind} | {_pct(s['UA'])} | {_pct(s['IRA'])} | "
                     f"{_pct(s['CRA'])} | {_with_base(s, 'clip_removal_accuracy', _pct)} | "
                     f"{_num(s.get('clip_score_retained'))} | | {_num(s.get('fid'), 4)} |")
    if results.get("robustness"):
        lines += robustness_markdown(results["robustness"])
    acc = results["accuracy"]
    lines += ["", "## Per-concept classifier accuracy (%)", "", "| theme | Acc_S |", "|---|---|"]
    lines += [f"| {t} | {_pct(v)} |" for t, v in acc["style"].items()]
    lines += ["", "| object | Acc_O |", "|---|---|"]
    lines += [f"| {o} | {_pct(v)} |" for o, v in acc["object"].items()]
    return "\n".join(lines) + "\n"


def robustness_markdown(rob: dict) -> list[str]:
    """The attack section of results.md: settings, ASR per target, the adversarial tokens of each success."""
    c = rob["config"]
    lines = ["", f"## Robustness: {rob['attack']} (ASR %, pre-attack successes included; lower is more robust)", "",
             f"- {c['tokens']} tokens ({c['insertion']}), {c['timesteps']} timesteps x {c['steps_per_timestep']} Adam "
             f"steps (lr {c['lr']}, weight decay {c['weight_decay']}), judged by {rob['judge']} on images of "
             f"{c['judge_steps']} steps, guidance {c['judge_guidance']}; {rob['seconds']:.0f} s", "",
             "| target | kind | prompts | pre-ASR | ASR | seconds |", "|---|---|---|---|---|---|"]
    for r in rob["targets"]:
        lines.append(f"| {r['target']} | {r['kind']} | {r['prompts']} | {_pct(r['pre_asr'])} | {_pct(r['asr'])} | "
                     f"{r['seconds']:.0f} |")
    for r in rob["targets"]:
        won = [o for o in r["per_prompt"] if o["success_after"] and not o["success_before"]]
        if won:
            lines += ["", f"Attack successes on {r['target']} (token ids, their text):", ""]
            lines += [f"- {o['prompt']} (seed {o['seed']}): {o['token_ids']} {o['tokens_text']!r} after {o['steps']} "
                      f"steps" for o in won]
    return lines


# --------------------------------------------------------------------------- files of one evaluation
RESULTS_JSON, RESULTS_MD, GRID_PNG = "results.json", "results.md", "answer_set_grid.png"
EXAMPLES_PNG = "attack_examples.png"


def grid_image(answer: AnswerSet, domain: Domain, seed: int, targets: Sequence[str], title: str,
               thumb: int = 48) -> Image.Image:
    """The answer set of one seed as a labelled theme x object grid, the targets' rows/columns framed."""
    cells = np.zeros((len(domain.themes), len(domain.objects), thumb, thumb, 3), np.uint8)
    for i in np.flatnonzero(answer.seeds == seed):
        with Image.open(answer.paths[i]) as im:
            cells[answer.themes[i], answer.objects[i]] = np.asarray(im.convert("RGB").resize((thumb, thumb),
                                                                                            Image.BICUBIC))
    marked_rows = [domain.themes.index(t) for t in targets if t in domain.themes]
    marked_cols = [domain.objects.index(t) for t in targets if t in domain.objects]
    return labelled_grid(cells, domain.themes, domain.objects, scale=2 if len(domain.themes) <= 20 else 1,
                         marked_rows=marked_rows, marked_cols=marked_cols, title=title)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(results: dict, answer: AnswerSet, domain: Domain, out: str | Path, grid_seed: int,
                 examples: Image.Image | None = None) -> None:
    """results.json, results.md, the answer-set grid PNG and the attack's ``examples`` in ``out``, each atomically."""
    out = Path(out)
    targets = [t["target"] for t in results["targets"]]
    shown = targets if len(targets) <= 2 else []
    title = (f"{results['label']} on {domain.name}, seed {grid_seed}: rows = style prompt, columns = object prompt"
             + (f"; red = target {', '.join(shown)}" if shown else ""))
    grid = grid_image(answer, domain, grid_seed, shown, title)
    out.mkdir(parents=True, exist_ok=True)
    if examples is not None:
        _save_png_atomic(examples, out / EXAMPLES_PNG)
    _write_atomic(out / RESULTS_JSON, json.dumps(results, indent=1).encode())
    _write_atomic(out / RESULTS_MD, results_markdown(results).encode())
    _save_png_atomic(grid, out / GRID_PNG)


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write a PNG through a temporary file in the same folder, with the permissions a plain write would get."""
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}", suffix=".png", delete=False)
    tmp.close()
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)  # mkstemp makes it 0600
    image.save(tmp.name, format="PNG")
    os.replace(tmp.name, path)


def summary_text(results: dict, out: str | Path | None = None) -> str:
    """The few lines a run prints: counts, settings, the judge, the means per target kind."""
    a = results["answer_set"]
    lines = [f"{results['label']} on {results['domain']}: {a['images']} images ({a['generated']} generated now), "
             f"{a['steps']} DDIM steps, guidance {a['guidance_scale']}; judged by {results['classifier']['name']}"]
    if a.get("subset"):
        lines.append(f"  SUBSET, not the protocol ({subset_text(a['subset'])})")
    for kind, s in results["summary"].items():
        extra = f", CLIP removal {s['clip_removal_accuracy']:.1%}" if "clip_removal_accuracy" in s else ""
        if "clip_removal_accuracy_base" in s:
            extra += f" (base model {s['clip_removal_accuracy_base']:.1%})"
        fid = f", FID {s['fid']:.4f}" if "fid" in s else ""
        lines.append(f"  {kind} targets ({s['targets']}): UA {s['UA']:.1%}  IRA {s['IRA']:.1%}  "
                     f"CRA {s['CRA']:.1%}{extra}{fid}")
    if results.get("fid"):
        lines.append(f"  FID: {results['fid']['features']}")
    rob = results.get("robustness")
    if rob:
        for kind, s in rob["summary"].items():
            lines.append(f"  {rob['attack']} ({rob['tokens']} tokens, {rob['insertion']}), {kind} targets "
                         f"({s['targets']}): pre-ASR {s['pre_asr']:.1%}  ASR {s['asr']:.1%}")
    wrote = f"; wrote {Path(out) / RESULTS_JSON}, {Path(out) / RESULTS_MD}, {Path(out) / GRID_PNG}" if out else ""
    lines.append(f"  {results['seconds']['total']:.0f} s on {results['hardware']}{wrote}")
    return "\n".join(lines)
