"""Forget/retain sets from a data folder: the concept's cells, foreign themes ignored, bad metadata refused;
retain prompts filtered against the concept."""

import shutil

import pytest
import torch

from erase.concepts import resolve_concept
from erase.data.layout import DatasetLayoutError
from erase.data.minicanvas import write_dataset
from erase.data.sets import default_prompts, read_forget_retain, retain_prompts


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


def test_retain_prompts_naming_the_concept_are_dropped_and_recorded(tmp_path):
    kept, info = retain_prompts("coco-objects", resolve_concept("Hot Dog"))
    assert "a photo of a hot dog" not in kept and "a photo of a dog" not in kept and "a photo of a cat" in kept
    assert info["read"] == 80 and info["kept"] == 78 and sorted(info["dropped"]) == ["a photo of a dog",
                                                                                     "a photo of a hot dog"]
    domain, info = retain_prompts("domain", resolve_concept("Candy"))
    assert domain and not any("Candy" in p for p in domain) and info["source"] == "domain"
    path = tmp_path / "retain.txt"
    path.write_text("# comment\na Van Gogh painting\n\na castle at night\n")
    kept, info = retain_prompts(str(path), resolve_concept("gogh"))
    assert kept == ["a castle at night"] and info["dropped"] == ["a Van Gogh painting"]
    with pytest.raises(ValueError, match="neither coco-objects, domain nor a text file"):
        retain_prompts(str(tmp_path / "missing.txt"), resolve_concept("Candy"))
