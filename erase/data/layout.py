"""Read and validate a dataset folder in the UnlearnCanvas layout ``<root>/<Style>/<Object>/<idx>.<ext>``.

The same reader serves the real UnlearnCanvas download (61 theme folders, 10 of them unused by
the benchmark) and MiniCanvas folders. Anything malformed raises ``DatasetLayoutError`` with one
line that names the offending path, so a user can fix the tree without reading a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from erase.concepts import Domain

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class DatasetLayoutError(ValueError):
    """A dataset tree that does not follow ``<root>/<Style>/<Object>/<idx>.<ext>``."""


@dataclass
class DatasetIndex:
    """Image paths per (theme, object), sorted by their integer index."""

    root: Path
    images: dict[tuple[str, str], dict[int, Path]]
    ignored: list[str] = field(default_factory=list)  # theme folders outside the domain

    @property
    def themes(self) -> list[str]:
        return sorted({t for t, _ in self.images})

    @property
    def objects(self) -> list[str]:
        return sorted({o for _, o in self.images})

    def __len__(self) -> int:
        return sum(len(v) for v in self.images.values())


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_layout(root: str | Path, domain: Domain | None = None, min_images: int = 1) -> DatasetIndex:
    """Index ``root``; with a ``domain``, every one of its themes and objects must be present.

    Theme folders the domain does not know are skipped and listed in ``ignored`` (the
    UnlearnCanvas download holds 10 styles the benchmark does not use).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset path {root} is a file, expected a folder <root>/<Style>/<Object>/<idx>.jpg")
    theme_dirs = _folders(root)
    if not theme_dirs:
        raise DatasetLayoutError(f"{root} holds no style folders (expected <root>/<Style>/<Object>/<idx>.jpg)")
    ignored: list[str] = []
    if domain is not None:
        names = {d.name for d in theme_dirs}
        missing = [t for t in domain.themes if t not in names]
        if missing:
            raise DatasetLayoutError(f"{root} lacks {len(missing)} style folder(s) of {domain.name}: "
                                     f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        ignored = sorted(names - set(domain.themes))
        theme_dirs = [d for d in theme_dirs if d.name in domain.themes]
    images: dict[tuple[str, str], dict[int, Path]] = {}
    for theme_dir in theme_dirs:
        object_dirs = _folders(theme_dir)
        stray = [p.name for p in theme_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
        if stray:
            raise DatasetLayoutError(f"{theme_dir / stray[0]} is a file where object folders were expected "
                                     f"(<root>/<Style>/<Object>/<idx>.jpg)")
        if domain is not None:
            names = {d.name for d in object_dirs}
            missing = [o for o in domain.objects if o not in names]
            if missing:
                raise DatasetLayoutError(f"{theme_dir} lacks object folder(s): {', '.join(missing)}")
            unknown = sorted(names - set(domain.objects))
            if unknown:
                raise DatasetLayoutError(f"{theme_dir / unknown[0]} is not an object of {domain.name} "
                                         f"(known: {', '.join(domain.objects)})")
        if not object_dirs:
            raise DatasetLayoutError(f"{theme_dir} holds no object folders")
        for object_dir in object_dirs:
            cell: dict[int, Path] = {}
            for path in sorted(object_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_dir():
                    raise DatasetLayoutError(f"{path} is a folder; images must sit directly in {object_dir}")
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise DatasetLayoutError(f"{path} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
                if not path.stem.isdigit():
                    raise DatasetLayoutError(f"{path} is not named <idx>{path.suffix} with an integer idx")
                idx = int(path.stem)
                if idx in cell:
                    raise DatasetLayoutError(f"{path} repeats index {idx} ({cell[idx].name})")
                cell[idx] = path
            if len(cell) < min_images:
                raise DatasetLayoutError(f"{object_dir} holds {len(cell)} image(s), at least {min_images} needed")
            images[(theme_dir.name, object_dir.name)] = dict(sorted(cell.items()))
    return DatasetIndex(root, images, ignored)


def reference_images(index: DatasetIndex, indices: range = range(1, 6), exclude_theme: str | None = None,
                     exclude_object: str | None = None) -> list[Path]:
    """The protocol's FID reference set: images 1-5 of every cell, the erased target's cells left out."""
    out = []
    for (theme, obj), cell in sorted(index.images.items()):
        if theme == exclude_theme or obj == exclude_object:
            continue
        absent = [i for i in indices if i not in cell]
        if absent:
            raise DatasetLayoutError(f"{index.root / theme / obj} lacks reference image(s) {absent} "
                                     f"(the protocol uses indices {indices.start}-{indices.stop - 1})")
        out.extend(cell[i] for i in indices)
    return out
