"""The judges' networks: the shipped MiniCanvas classifier is accurate, weights round-trip, bad folders are refused."""

import pytest
import torch

from erase.concepts import MINICANVAS
from erase.data.minicanvas import render_tensors
from pipelines.judges import MiniCanvasClassifier
from pipelines.weights import CheckpointError


def test_shipped_minicanvas_judge_is_accurate_on_fresh_held_out_renders():
    """Acceptance of the embedded world's judge: at least 98% on both heads, on renders of a seed never trained on."""
    judge = MiniCanvasClassifier.from_pretrained()
    assert judge.themes == MINICANVAS.themes and judge.objects == MINICANVAS.objects
    x, ys, yo = render_tensors(per_cell=4, seed=424242)
    s, o = judge.predict(x)
    style_acc, object_acc = (s == ys).float().mean().item(), (o == yo).float().mean().item()
    assert style_acc >= 0.98 and object_acc >= 0.98, (style_acc, object_acc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_a_judge_on_the_gpu_takes_cpu_images_and_answers_on_the_cpu():
    """unlearncanvas-eval reads its images from disk (CPU) and places the judge with accelerate (GPU)."""
    judge = MiniCanvasClassifier.from_pretrained()
    x, _, _ = render_tensors(per_cell=1, seed=424242)
    on_cpu, on_gpu = judge.predict_proba(x), judge.to("cuda").predict_proba(x)
    features = judge.embed(x)
    assert on_gpu[0].device.type == "cpu" and features.device.type == "cpu"
    for a, b in zip(on_cpu, on_gpu):  # other kernels on the GPU (TF32 convolutions): float noise only
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2)


def test_save_load_round_trip_and_corrupt_checkpoint(tmp_path):
    model = MiniCanvasClassifier(MINICANVAS.themes, MINICANVAS.objects, width=4).eval()
    model.save_pretrained(tmp_path / "c")
    again = MiniCanvasClassifier.from_pretrained(tmp_path / "c")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x)[0], again(x)[0])  # same weights, same kernels, same batch: bit-identical
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        MiniCanvasClassifier.from_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match="no MiniCanvas classifier"):
        MiniCanvasClassifier.from_pretrained(tmp_path / "missing")
