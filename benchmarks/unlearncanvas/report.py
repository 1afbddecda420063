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
