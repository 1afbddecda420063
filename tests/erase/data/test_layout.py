"""The dataset-layout reader the FID reference uses (erase.data.layout; this file belongs in tests/erase/data/)."""

import shutil

import pytest

from erase.concepts import MINICANVAS, UNLEARNCANVAS
from erase.data import minicanvas
from erase.data.layout import DatasetLayoutError, read_layout, reference_images


def test_reads_an_unlearncanvas_tree_with_real_names(fake_unlearncanvas):
    index = read_layout(fake_unlearncanvas, UNLEARNCANVAS)
    assert index.themes == sorted(UNLEARNCANVAS.themes) and index.objects == list(UNLEARNCANVAS.objects)
    assert index.ignored == ["Pointillism"]
    assert len(index) == 51 * 20 * 5
    refs = reference_images(index, exclude_theme="Van_Gogh")
    assert len(refs) == 50 * 20 * 5 and not any("Van_Gogh" in str(p) for p in refs)
    assert len(reference_images(index, exclude_object="Dogs")) == 51 * 19 * 5


def test_reads_minicanvas_written_by_the_generator(tmp_path):
    minicanvas.write_dataset(tmp_path / "mc", per_cell=2)
    index = read_layout(tmp_path / "mc", MINICANVAS)
    assert len(index) == 11 * 10 * 2
    assert list(index.images[("Neon", "Fish")]) == [1, 2]


def _cell(root, theme="Neon", obj="Fish", names=("1.png",)):
    folder = root / theme / obj
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")
    return root


@pytest.mark.parametrize("setup,message", [
    (lambda r: None, "does not exist"),
    (lambda r: r.mkdir(), "holds no style folders"),
    (lambda r: _cell(r, names=("one.png",)), "not named <idx>"),
    (lambda r: _cell(r, names=("1.txt",)), "is not an image"),
    (lambda r: _cell(r, names=()), "holds 0 image"),
    (lambda r: (_cell(r), (r / "Neon" / "notes.txt").write_text("x")), "is a file where object folders"),
])
def test_malformed_trees_are_named(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetLayoutError, match=message):
        read_layout(root)


def test_missing_domain_folders_are_listed(tmp_path):
    root = _cell(tmp_path / "data")
    with pytest.raises(DatasetLayoutError, match="lacks 10 style folder"):
        read_layout(root, MINICANVAS)
    minicanvas.write_dataset(tmp_path / "mc", per_cell=1)
    (tmp_path / "mc" / "Neon" / "Fish" / "1.png").rename(tmp_path / "mc" / "Neon" / "Fish" / "7.png")
    index = read_layout(tmp_path / "mc", MINICANVAS)
    with pytest.raises(DatasetLayoutError, match="lacks reference image"):
        reference_images(index, indices=range(1, 2))
    shutil.rmtree(tmp_path / "mc" / "Pop" / "Star")
    with pytest.raises(DatasetLayoutError, match="Pop lacks object folder.*Star"):
        read_layout(tmp_path / "mc", MINICANVAS)
