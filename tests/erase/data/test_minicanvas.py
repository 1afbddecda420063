"""The MiniCanvas renderer (erase.data.minicanvas; this file belongs in tests/erase/data/)."""

import numpy as np
import pytest

from erase.data import minicanvas


def test_names_are_plain_prompt_words():
    assert len(minicanvas.DOMAIN.styles) >= 10 and len(minicanvas.OBJECTS) >= 10
    assert minicanvas.PHOTO_THEME in minicanvas.THEMES
    for name in minicanvas.THEMES + minicanvas.OBJECTS:
        assert name.isalpha(), name
    assert list(minicanvas.THEMES) == sorted(minicanvas.THEMES)


def test_render_is_deterministic_and_varies_with_index():
    a = minicanvas.render("Neon", "Fish", 1, seed=3)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, minicanvas.render("Neon", "Fish", 1, seed=3))
    assert not np.array_equal(a, minicanvas.render("Neon", "Fish", 2, seed=3))
    assert not np.array_equal(a, minicanvas.render("Neon", "Fish", 1, seed=4))


def test_styles_differ_in_colour_statistics():
    """Every pair of styles is told apart by mean colour alone (a floor, textures add more)."""
    means = {t: np.stack([minicanvas.render(t, o, i) for o in minicanvas.OBJECTS for i in range(3)]
                         ).reshape(-1, 3).mean(0) for t in minicanvas.THEMES}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).max() > 12, (a, b)


def test_object_masks_vary_in_position_size_rotation_and_differ_between_objects():
    rng = lambda i: np.random.default_rng(i)  # noqa: E731
    masks = {o: minicanvas.object_mask(o, rng(0), 32) for o in minicanvas.OBJECTS}
    for o, m in masks.items():
        assert 0.08 < m.mean() < 0.6, o  # a real silhouette, not empty, not the whole canvas
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(masks[a] - masks[b]).mean() > 0.05, (a, b)
    variants = [minicanvas.object_mask("Star", rng(i), 32) for i in range(5)]
    assert all(np.abs(variants[0] - v).mean() > 0.01 for v in variants[1:])


def test_write_dataset_layout_and_refuses_existing(tmp_path):
    root = minicanvas.write_dataset(tmp_path / "mc", per_cell=2)
    assert sorted(p.name for p in root.iterdir()) == sorted(minicanvas.THEMES)
    assert sorted(p.name for p in (root / "Neon" / "Fish").iterdir()) == ["1.png", "2.png"]
    assert not (tmp_path / "mc.partial").exists()
    with pytest.raises(FileExistsError):
        minicanvas.write_dataset(root, per_cell=1)


@pytest.mark.parametrize("args", [["--per-cell", "0"], ["--size", "12"], ["--size", "0"], ["--seed", "-1"]])
def test_cli_rejects_absurd_sizes_before_creating_anything(tmp_path, capsys, args):
    assert minicanvas.main(["--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minicanvas: error:") and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # neither x nor x.partial


def test_an_interrupted_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    calls = []

    def render_then_interrupt(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((32, 32, 3), np.uint8)

    monkeypatch.setattr(minicanvas, "render", render_then_interrupt)  # the project's renderer, not a library
    with pytest.raises(KeyboardInterrupt):
        minicanvas.write_dataset(tmp_path / "mc", per_cell=2)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown MiniCanvas style"):
        minicanvas.render("Baroque", "Fish", 1)
    with pytest.raises(ValueError, match="unknown MiniCanvas object"):
        minicanvas.render("Neon", "Dragon", 1)
