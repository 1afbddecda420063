"""MiniCanvas: a procedural stand-in for UnlearnCanvas that is generated offline in seconds.

UnlearnCanvas pairs every artistic style with every object class and stores the images as
``<root>/<Style>/<Object>/<idx>.jpg``; MiniCanvas does the same at 32 px so that the whole
protocol (train a base model, erase, generate the answer set, classify) runs on two CPU cores.
Each style is a palette plus a texture plus a way of drawing the object (fill, outline,
hatching, blur, tiles); each object is a silhouette that varies in position, size and rotation.
Every image is a pure function of (seed, style, object, index), so any image can be rebuilt.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from erase.concepts import MINICANVAS as DOMAIN

# Label order of both classifier heads (alphabetical, as UnlearnCanvas orders its themes): erase.concepts.
THEMES, OBJECTS, PHOTO_THEME = DOMAIN.themes, DOMAIN.objects, DOMAIN.photo_theme
DEFAULT_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for clean anti-aliased edges

# --------------------------------------------------------------------------- silhouettes
# A silhouette is a list of (mode, primitive) drawn in unit coordinates [-1, 1]^2, y down.
# mode "+" paints, "-" erases (for the crescent moon).
Primitive = tuple[str, str, tuple]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / points
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


SILHOUETTES: dict[str, list[Primitive]] = {
    "Arrow": [("+", "poly", ((-0.9, -0.16), (0.2, -0.16), (0.2, 0.16), (-0.9, 0.16))),
              ("+", "poly", ((0.1, -0.6), (0.9, 0.0), (0.1, 0.6)))],
    "Boat": [("+", "poly", ((-0.95, 0.3), (0.95, 0.3), (0.6, 0.75), (-0.6, 0.75))),
             ("+", "poly", ((-0.05, -0.9), (-0.05, 0.22), (-0.75, 0.22))),
             ("+", "poly", ((0.05, -0.6), (0.05, 0.22), (0.55, 0.22)))],
    "Fish": [("+", "ellipse", (-0.2, 0.0, 0.6, 0.38)),
             ("+", "poly", ((0.25, 0.0), (0.9, -0.5), (0.9, 0.5)))],
    "Flower": [("+", "ellipse", (0.55 * math.cos(a), 0.55 * math.sin(a), 0.3, 0.3))
               for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    + [("+", "ellipse", (0.0, 0.0, 0.35, 0.35))],
    "Heart": [("+", "ellipse", (-0.38, -0.3, 0.42, 0.42)),
              ("+", "ellipse", (0.38, -0.3, 0.42, 0.42)),
              ("+", "poly", ((-0.79, -0.16), (0.79, -0.16), (0.0, 0.85)))],
    "House": [("+", "poly", ((-0.6, -0.05), (0.6, -0.05), (0.6, 0.85), (-0.6, 0.85))),
              ("+", "poly", ((-0.85, -0.05), (0.0, -0.85), (0.85, -0.05))),
              ("-", "poly", ((-0.15, 0.4), (0.15, 0.4), (0.15, 0.85), (-0.15, 0.85)))],
    "Moon": [("+", "ellipse", (0.0, 0.0, 0.85, 0.85)),
             ("-", "ellipse", (0.4, -0.2, 0.7, 0.7))],
    "Mushroom": [("+", "chord", (0.0, 0.1, 0.9, 0.75)),
                 ("+", "poly", ((-0.25, 0.05), (0.25, 0.05), (0.3, 0.85), (-0.3, 0.85)))],
    "Star": [("+", "poly", tuple(_star(5, 0.95, 0.4)))],
    "Tree": [("+", "poly", ((0.0, -0.95), (-0.65, 0.4), (0.65, 0.4))),
             ("+", "poly", ((-0.15, 0.35), (0.15, 0.35), (0.15, 0.9), (-0.15, 0.9)))],
}
assert tuple(sorted(SILHOUETTES)) == OBJECTS


def object_mask(obj: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft [0, 1] mask of ``obj`` at a random scale, rotation and position."""
    big = size * SUPERSAMPLE
    scale = rng.uniform(0.58, 0.78) * big / 2
    angle = math.radians(rng.uniform(-20, 20))
    cx = big / 2 + rng.uniform(-0.1, 0.1) * big
    cy = big / 2 + rng.uniform(-0.1, 0.1) * big
    cos, sin = math.cos(angle), math.sin(angle)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (cx + scale * (cos * x - sin * y), cy + scale * (sin * x + cos * y))

    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for mode, kind, args in SILHOUETTES[obj]:
        fill = 255 if mode == "+" else 0
        if kind == "poly":
            draw.polygon([to_px(x, y) for x, y in args], fill=fill)
        else:  # ellipses and chords as polygons so that rotation applies to them too
            ex, ey, rx, ry = args
            stop = math.pi if kind == "chord" else 2 * math.pi
            ts = np.linspace(-stop, 0, 48) if kind == "chord" else np.linspace(0, stop, 48, endpoint=False)
            draw.polygon([to_px(ex + rx * math.cos(t), ey + ry * math.sin(t)) for t in ts], fill=fill)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def outline_mask(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Soft outline of a soft mask: dilation minus erosion."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    k = 2 * width + 1
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(k)), dtype=np.float32) / 255
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(k)), dtype=np.float32) / 255
    return np.clip(grown - shrunk, 0, 1)


def _blur(arr: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of an HxW or HxWx3 float array in [0, 1]."""
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255


# --------------------------------------------------------------------------- styles
Painter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.05) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 1)


def _solid(size: int, rgb: np.ndarray) -> np.ndarray:
    return np.broadcast_to(rgb, (size, size, 3)).astype(np.float32).copy()


def _comp(bg: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return bg * (1 - a) + fg * a


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def paint_candy(mask, rng):
    s = mask.shape[0]
    y, x = _grid(s)
    stripes = ((x + y + rng.uniform(0, 6)) // 3 % 2)[..., None]
    bg = stripes * _jitter(rng, (1.0, 0.62, 0.8)) + (1 - stripes) * _jitter(rng, (1.0, 0.95, 0.97), 0.03)
    return _comp(bg, _solid(s, _jitter(rng, (0.55, 0.15, 0.8))), mask)


def paint_fire(mask, rng):
    s = mask.shape[0]
    streaks = _blur(np.repeat(rng.uniform(0, 1, (1, s)), s, 0), 0.6)[..., None]
    ramp = np.linspace(0.2, 1.0, s, dtype=np.float32)[:, None, None]
    bg = np.clip(_jitter(rng, (0.85, 0.12, 0.02)) + ramp * streaks * np.array([0.1, 0.45, 0.0]), 0, 1)
    return _comp(bg, _solid(s, _jitter(rng, (1.0, 0.92, 0.2))), mask)


def paint_forest(mask, rng):
    s = mask.shape[0]
    y, _ = _grid(s)
    band = ((y + rng.uniform(0, 8)) // 4 % 2)[..., None]
    bg = band * _jitter(rng, (0.1, 0.45, 0.15)) + (1 - band) * _jitter(rng, (0.2, 0.6, 0.2))
    return _comp(bg, _solid(s, _jitter(rng, (0.5, 0.3, 0.12))), mask)


def paint_mosaic(mask, rng):
    s = mask.shape[0]
    tile = 2  # 2 px tiles keep the silhouette readable at 32 px
    n = s // tile
    teal = _jitter(rng, (0.1, 0.55, 0.55)) + rng.uniform(-0.12, 0.12, (n, n, 1))
    orange = _jitter(rng, (0.95, 0.45, 0.1)) + rng.uniform(-0.12, 0.12, (n, n, 1))
    coarse = mask.reshape(n, tile, n, tile).mean(axis=(1, 3))[..., None] > 0.4
    img = np.repeat(np.repeat(np.where(coarse, orange, teal), tile, 0), tile, 1)
    y, x = _grid(s)
    grout = ((y % 4 == 0) | (x % 4 == 0))[..., None] & ~np.repeat(np.repeat(coarse, tile, 0), tile, 1)
    return np.clip(np.where(grout, 0.12, img), 0, 1)


def paint_neon(mask, rng):
    s = mask.shape[0]
    bg = _solid(s, _jitter(rng, (0.04, 0.02, 0.1), 0.03))
    y, x = _grid(s)
    bg[(y % 8 == 0) | (x % 8 == 0)] += np.array([0.12, 0.0, 0.2], np.float32)
    inner = _comp(bg, _solid(s, _jitter(rng, (0.3, 0.0, 0.3))), mask)
    edge = outline_mask(mask)
    glow = _blur(edge, 1.0)
    cyan = _solid(s, _jitter(rng, (0.1, 1.0, 1.0)))
    return np.clip(_comp(inner, cyan, np.clip(edge + 0.5 * glow, 0, 1)), 0, 1)


def paint_pop(mask, rng):
    s = mask.shape[0]
    y, x = _grid(s)
    off = rng.uniform(0, 6, 2)
    dots = ((((y + off[0]) % 6) - 3) ** 2 + (((x + off[1]) % 6) - 3) ** 2 < 3.0)[..., None]
    bg = np.where(dots, _jitter(rng, (0.9, 0.1, 0.15)), _jitter(rng, (1.0, 0.88, 0.1)))
    img = _comp(bg, _solid(s, _jitter(rng, (0.1, 0.3, 0.95))), mask)
    return _comp(img, _solid(s, np.zeros(3, np.float32)), outline_mask(mask))


def paint_sketch(mask, rng):
    s = mask.shape[0]
    paper = _solid(s, _jitter(rng, (0.95, 0.94, 0.9), 0.03)) + rng.normal(0, 0.02, (s, s, 1))
    y, x = _grid(s)
    hatch = ((x - y + rng.uniform(0, 3)) % 3 < 1).astype(np.float32) * mask
    ink = np.clip(outline_mask(mask) + 0.8 * hatch, 0, 1)
    return np.clip(_comp(paper, _solid(s, _jitter(rng, (0.25, 0.25, 0.28))), ink), 0, 1)


def paint_sunset(mask, rng):
    s = mask.shape[0]
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    top, bottom = _jitter(rng, (1.0, 0.6, 0.15)), _jitter(rng, (0.45, 0.1, 0.5))
    bg = np.broadcast_to(top * (1 - t) + bottom * t, (s, s, 3))
    return _comp(bg, _solid(s, _jitter(rng, (0.05, 0.03, 0.05), 0.03)), mask)


def paint_watercolor(mask, rng):
    s = mask.shape[0]
    wash = _blur(rng.uniform(0, 1, (s, s)), 3.0)[..., None]
    bg = _jitter(rng, (0.7, 0.92, 0.85)) + (wash - 0.5) * 0.4
    soft = _blur(mask, 1.2)
    return np.clip(_comp(bg, _solid(s, _jitter(rng, (0.95, 0.45, 0.6))), soft), 0, 1)


def paint_winter(mask, rng):
    s = mask.shape[0]
    bg = _solid(s, _jitter(rng, (0.78, 0.82, 0.9), 0.03))
    flakes = rng.uniform(0, 1, (s, s)) < 0.08
    bg[flakes] = 1.0
    return _comp(bg, _solid(s, _jitter(rng, (0.1, 0.15, 0.45))), mask)


def paint_photo(mask, rng):
    """Natural-looking scene: sky-to-ground gradient and a shaded object of a random colour."""
    s = mask.shape[0]
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    sky = _jitter(rng, (0.55, 0.7, 0.85), 0.1)
    ground = _jitter(rng, (0.45, 0.45, 0.35), 0.1)
    bg = np.broadcast_to(sky * (1 - t) + ground * t, (s, s, 3)) + rng.normal(0, 0.015, (s, s, 1))
    y, x = _grid(s)
    shade = (1.15 - 0.4 * (x + y) / (2 * s))[..., None]
    base = rng.uniform(0.1, 0.45, 3).astype(np.float32)
    base[rng.integers(3)] += 0.35  # one dominant channel: a coloured object that stands out from the sky
    return np.clip(_comp(bg, np.clip(base * shade, 0, 1), mask), 0, 1)


PAINTERS: dict[str, Painter] = {
    "Candy": paint_candy, "Fire": paint_fire, "Forest": paint_forest, "Mosaic": paint_mosaic,
    "Neon": paint_neon, "Pop": paint_pop, "Sketch": paint_sketch, "Sunset": paint_sunset,
    "Watercolor": paint_watercolor, "Winter": paint_winter, PHOTO_THEME: paint_photo,
}
assert tuple(sorted(PAINTERS)) == THEMES


# --------------------------------------------------------------------------- rendering
def image_rng(seed: int, theme: str, obj: str, idx: int) -> np.random.Generator:
    """The generator behind one image: a pure function of its coordinates in the grid."""
    return np.random.default_rng([seed, THEMES.index(theme), OBJECTS.index(obj), idx])


def render(theme: str, obj: str, idx: int, seed: int = 0, size: int = DEFAULT_SIZE) -> np.ndarray:
    """One MiniCanvas image as HxWx3 uint8."""
    if theme not in PAINTERS:
        raise ValueError(f"unknown MiniCanvas style {theme!r}; known: {', '.join(THEMES)}")
    if obj not in SILHOUETTES:
        raise ValueError(f"unknown MiniCanvas object {obj!r}; known: {', '.join(OBJECTS)}")
    if not 16 <= size <= 1024 or size % 8:
        raise ValueError(f"image size must be a multiple of 8 between 16 and 1024, got {size}")
    rng = image_rng(seed, theme, obj, idx)
    img = PAINTERS[theme](object_mask(obj, rng, size), rng)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Sample:
    theme: str
    obj: str
    idx: int


def grid_samples(per_cell: int, start_idx: int = 1,
                 themes: Sequence[str] = THEMES, objects: Sequence[str] = OBJECTS) -> list[Sample]:
    return [Sample(t, o, i) for t in themes for o in objects for i in range(start_idx, start_idx + per_cell)]


def render_arrays(samples: Sequence[Sample], seed: int = 0, size: int = DEFAULT_SIZE
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 with theme and object label indices, for in-memory training."""
    images = np.stack([render(s.theme, s.obj, s.idx, seed, size) for s in samples])
    themes = np.array([THEMES.index(s.theme) for s in samples], dtype=np.int64)
    objects = np.array([OBJECTS.index(s.obj) for s in samples], dtype=np.int64)
    return images, themes, objects


def render_tensors(per_cell: int, seed: int, size: int = DEFAULT_SIZE
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float images (N, 3, H, W) in [0, 1] of ``per_cell`` renders per cell, with theme and object labels."""
    images, themes, objects = render_arrays(grid_samples(per_cell), seed, size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(themes), torch.from_numpy(objects)


def write_dataset(root: str | Path, per_cell: int = 20, seed: int = 0, size: int = DEFAULT_SIZE,
                  ext: str = "png") -> Path:
    """Write MiniCanvas as ``<root>/<Theme>/<Object>/<idx>.<ext>``, idx from 1, like UnlearnCanvas.

    Every argument is checked before anything is created; the tree is built in a sibling temporary
    folder that is renamed into place, or removed on any failure (a kill -9 aside, whose leftover
    the next run replaces), so no half-written dataset is left behind.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose a new folder")
    if per_cell < 1 or per_cell > 10_000:
        raise ValueError(f"--per-cell must be between 1 and 10000, got {per_cell}")
    if not 16 <= size <= 1024 or size % 8:
        raise ValueError(f"--size must be a multiple of 8 between 16 and 1024, got {size}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    if ext not in ("png", "jpg"):
        raise ValueError(f"--ext must be png or jpg, got {ext!r}")
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for s in grid_samples(per_cell):
            folder = tmp / s.theme / s.obj
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render(s.theme, s.obj, s.idx, seed, size)).save(folder / f"{s.idx}.{ext}")
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the MiniCanvas dataset in the UnlearnCanvas layout.")
    parser.add_argument("--out", required=True, help="new folder to create")
    parser.add_argument("--per-cell", type=int, default=20, help="images per (style, object); default 20 as UnlearnCanvas")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ext", choices=("png", "jpg"), default="png")
    args = parser.parse_args(argv)
    try:
        root = write_dataset(args.out, args.per_cell, args.seed, args.size, args.ext)
    except (ValueError, FileExistsError, OSError) as err:
        print(f"minicanvas: error: {err}", file=sys.stderr)
        return 2
    n = len(THEMES) * len(OBJECTS) * args.per_cell
    print(f"wrote {n} images ({len(THEMES)} styles x {len(OBJECTS)} objects x {args.per_cell}) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
