"""Forget/retain sets from a data folder: the concept's cells, foreign themes ignored, bad metadata refused."""

import shutil

import pytest
import torch

from erase.concepts import resolve_concept
from erase.data.layout import DatasetLayoutError
from erase.data.minicanvas import write_dataset
from erase.data.sets import default_prompts, read_forget_retain


def test_layout_folder_splits_by_the_concept_and_ignores_foreign_themes(tmp_path):
    root = write_dataset(tmp_path / "mini", per_cell=1, size=16)
    shutil.copytree(root / "Candy", root / "Not_A_Benchmark_Style")  # like the 10 extra UnlearnCanvas styles
    forget, retain = read_forget_retain(root, resolve_concept("Candy"), 100, 1000, 8, torch.Generator())
    assert len(forget.prompts) == 10 and all("Candy" in p for p in forget.prompts)
    assert len(retain.prompts) == 100 and forget.images.shape == (10, 3, 8, 8)
    assert float(forget.images.min()) >= -1 and float(forget.images.max()) <= 1


def test_metadata_rows_must_name_file_and_text(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "0.png"}\n')
    with pytest.raises(DatasetLayoutError, match="line 1"):
        read_forget_retain(tmp_path, resolve_concept("Candy"), 1, 1, 8, torch.Generator())


def test_default_prompts_are_the_caption_grid_without_the_concept():
    forget, retain = default_prompts(resolve_concept("Fish"))
    assert len(forget) == 11 and all(p.startswith("A Fish image") for p in forget)
    assert len(retain) == 99 and not any("Fish" in p for p in retain)
