import pytest
import torch

from benchmarks.unlearncanvas import minicanvas
from benchmarks.unlearncanvas.classifier import (
    CheckpointError, MiniCanvasClassifier, UnlearnCanvasClassifier, accuracy, augment, render_tensors)


def test_shipped_classifier_is_accurate_on_fresh_held_out_renders():
    """Acceptance: at least 98% on both heads, on renders from a seed never used in training."""
    model = MiniCanvasClassifier.from_pretrained()
    x, ys, yo = render_tensors(per_cell=4, seed=424242)
    style_acc, object_acc = accuracy(model, x, ys, yo)
    assert style_acc >= 0.98 and object_acc >= 0.98, (style_acc, object_acc)


def test_save_load_round_trip_and_corrupt_checkpoint(tmp_path):
    model = MiniCanvasClassifier(width=4).eval()
    model.save_pretrained(tmp_path / "c")
    again = MiniCanvasClassifier.from_pretrained(tmp_path / "c")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x)[0], again(x)[0])
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        MiniCanvasClassifier.from_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match="no MiniCanvas classifier"):
        MiniCanvasClassifier.from_pretrained(tmp_path / "missing")


def test_augment_keeps_range_and_shape():
    x = torch.rand(8, 3, 32, 32)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def _vit_checkpoint(path, classes, key="model_state_dict"):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes)
    torch.save({key: model.state_dict()} if key else model.state_dict(), path)


def test_unlearncanvas_classifier_reads_pth_with_weights_only(tmp_path):
    """The real judges are ViT-L/16; a ViT-Ti/16 of the same family keeps the test fast."""
    _vit_checkpoint(tmp_path / "style50.pth", 51)
    _vit_checkpoint(tmp_path / "style50_cls.pth", 20)
    judge = UnlearnCanvasClassifier(tmp_path / "style50.pth", tmp_path / "style50_cls.pth", arch="vit_tiny_patch16_224")
    s, o = judge.predict(torch.rand(2, 3, 32, 32))
    assert s.shape == (2,) and o.shape == (2,) and int(s.max()) < 51 and int(o.max()) < 20
    assert judge.themes[38] == "Seed_Images"
    with pytest.raises(CheckpointError, match="does not fit"):  # style and object checkpoints swapped
        UnlearnCanvasClassifier(tmp_path / "style50_cls.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="does not exist"):
        UnlearnCanvasClassifier(tmp_path / "x.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        UnlearnCanvasClassifier(tmp_path / "bad.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
