"""Pictures and tables for UnlearnCanvas results."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def results_markdown(results: dict) -> str:
    """The Markdown report of one ``unlearncanvas-eval`` run: what was measured, by what, on what."""
    a, m = results["answer_set"], results["model"]
    lines = [f"# UnlearnCanvas evaluation: {results['label']} ({results['domain']})", ""]
    model = m.get("base") or "(answer set given)"
    if m.get("artifact"):
        model += f" + artifact {m['artifact']} ({m.get('method')}, concept {m.get('concept')})"
    lines += [f"- model: {model}",
              f"- answer set: {a['images']} images, {a['grid']}; template `{a['prompt_template']}` "
              f"(photo theme: '{a['photo_phrase']}'); {a['sampler']}, {a['steps']} steps, guidance "
              f"{a['guidance_scale']}; seeds {', '.join(map(str, a['seeds']))}; {a['generated']} generated in this run",
              f"- classifier: {results['classifier']['name']} ({results['classifier']['images_per_theme']} images "
              f"per theme, {results['classifier']['images_per_object']} per object)"]
    if results.get("clip"):
        c = results["clip"]
        lines.append(f"- CLIP: {c['scorer']}; zero-shot = {c['zero_shot']}; CLIP score = {c['clip_score']}")
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
    lines += ["", "## Per target (%, FID lower is better)", "",
              "| target | kind | UA | IRA | CRA | CLIP removal | CLIP score retained | CLIP score forget | FID |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["targets"]:
        lines.append(f"| {r['target']} | {r['kind']} | {_pct(r['UA'])} | {_pct(r['IRA'])} | {_pct(r['CRA'])} | "
                     f"{_pct(r.get('clip_removal_accuracy'))} | {_num(r.get('clip_score_retained'))} | "
                     f"{_num(r.get('clip_score_forget'))} | {_num(r.get('fid'), 4)} |")
    for kind, s in results["summary"].items():
        if kind != "fid":
            lines.append(f"| **mean of {s['targets']} {kind} targets** | {kind} | {_pct(s['UA'])} | {_pct(s['IRA'])} | "
                         f"{_pct(s['CRA'])} | {_pct(s.get('clip_removal_accuracy'))} | "
                         f"{_num(s.get('clip_score_retained'))} | | |")
    acc = results["accuracy"]
    lines += ["", "## Per-concept classifier accuracy (%)", "", "| theme | Acc_S |", "|---|---|"]
    lines += [f"| {t} | {_pct(v)} |" for t, v in acc["style"].items()]
    lines += ["", "| object | Acc_O |", "|---|---|"]
    lines += [f"| {o} | {_pct(v)} |" for o, v in acc["object"].items()]
    return "\n".join(lines) + "\n"
