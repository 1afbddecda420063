import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.unlearncanvas.scorers.classifier import UnlearnCanvasClassifier, preprocess
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


def test_the_vit_input_is_the_official_pil_resize_within_one_grey_level():
    """accuracy.py: PIL image -> transforms.Resize((224, 224)) (PIL's antialiased bilinear) -> ToTensor -> 0.5/0.5."""
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(smooth).resize((512, 512), Image.BICUBIC))  # texture at several scales
    photo = np.clip(photo.astype(int) + rng.integers(-40, 41, photo.shape), 0, 255).astype(np.uint8)
    official = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR), dtype=np.float64)
    ours = preprocess(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255)
    ours = ((ours[0].permute(1, 2, 0).double() * 0.5 + 0.5) * 255).numpy()
    assert np.abs(ours - official).mean() < 0.5 and np.abs(ours - official).max() <= 1.5
