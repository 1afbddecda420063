import pytest
import torch

from benchmarks.unlearncanvas.scorers.classifier import UnlearnCanvasClassifier
from erase.concepts import UNLEARNCANVAS
from pipelines.weights import CheckpointError


def _vit_checkpoint(path, classes, key="model_state_dict"):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes)
    torch.save({key: model.state_dict()} if key else model.state_dict(), path)


def test_unlearncanvas_classifier_reads_pth_with_weights_only(tmp_path):
    """The real judges are ViT-L/16; a ViT-Ti/16 of the same family keeps the test fast."""
    _vit_checkpoint(tmp_path / "style50.pth", 51)
    _vit_checkpoint(tmp_path / "style50_cls.pth", 20, key=None)  # a bare state dict is read too
    judge = UnlearnCanvasClassifier(tmp_path / "style50.pth", tmp_path / "style50_cls.pth", arch="vit_tiny_patch16_224")
    s, o = judge.predict(torch.rand(2, 3, 32, 32))
    assert s.shape == (2,) and o.shape == (2,) and int(s.max()) < 51 and int(o.max()) < 20
    assert judge.themes == UNLEARNCANVAS.themes and judge.themes[38] == "Seed_Images"
    with pytest.raises(CheckpointError, match="does not fit"):  # style and object checkpoints swapped
        UnlearnCanvasClassifier(tmp_path / "style50_cls.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="does not exist"):
        UnlearnCanvasClassifier(tmp_path / "x.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        UnlearnCanvasClassifier(tmp_path / "bad.pth", tmp_path / "style50.pth", arch="vit_tiny_patch16_224")
