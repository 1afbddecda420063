import json

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.unlearncanvas.scorers.clip import ClipScorer
from erase.concepts import MINICANVAS
from erase.data.minicanvas import render_tensors
from pipelines.judges import CLIP_CONFIG, CLIP_WEIGHTS, MINICANVAS_CLIP_DIR, build_clip, tiny_clip_config
from pipelines.weights import CheckpointError


def register_tiny_open_clip(folder) -> str:
    """A user-named open_clip architecture, registered the way open_clip reads its own model configs."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_clip_config()
    cfg["text_cfg"]["layers"] = cfg["vision_cfg"]["layers"] = 1
    # as small as open_clip allows: the tests check names and plumbing, and encode thousands of images
    cfg["embed_dim"] = 16
    cfg["vision_cfg"].update(image_size=16, patch_size=8, width=32, head_width=32)
    cfg["text_cfg"].update(width=32, heads=1)
    (folder / "uc-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = build_clip(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    return "uc-test-tiny"


def test_shipped_clip_is_small_and_zero_shot_accurate_on_fresh_renders():
    assert (MINICANVAS_CLIP_DIR / CLIP_WEIGHTS).stat().st_size <= 20 * 2**20
    cfg = json.loads((MINICANVAS_CLIP_DIR / CLIP_CONFIG).read_text())
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == 49408  # open_clip's BPE ids, tokenized to its context
    assert cfg["held_out"]["zero_shot_style_accuracy"] >= 0.97 and cfg["held_out"]["zero_shot_object_accuracy"] >= 0.97
    scorer = ClipScorer.from_minicanvas()
    x, ys, yo = render_tensors(per_cell=2, seed=515151)
    emb = scorer.encode_images(x)
    ps, po = scorer.zero_shot(emb, MINICANVAS)
    style_acc, object_acc = (ps == ys).float().mean().item(), (po == yo).float().mean().item()
    assert style_acc >= 0.95 and object_acc >= 0.95, (style_acc, object_acc)  # config: held-out 1.0 / 0.999
    # an image scores higher with its own caption than with another object's caption
    own = scorer.encode_texts([MINICANVAS.prompt(MINICANVAS.themes[int(t)], MINICANVAS.objects[int(o)])
                               for t, o in zip(ys, yo)])
    other = scorer.encode_texts([MINICANVAS.prompt(MINICANVAS.themes[int(t)], MINICANVAS.objects[(int(o) + 3) % 10])
                                 for t, o in zip(ys, yo)])
    assert (ClipScorer.clip_score(emb, own) > ClipScorer.clip_score(emb, other)).float().mean() > 0.9
    # the grid embeddings given once give the same assignment as computing them per call: the same ops on the
    # same inputs in one process, so the indices are equal exactly (bit-exactness is the point here)
    again = scorer.zero_shot(emb, MINICANVAS, grid_text=scorer.grid_texts(MINICANVAS))
    assert torch.equal(again[0], ps) and torch.equal(again[1], po)


def test_clip_score_definition():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    # float32 rounding of 1/sqrt(2): a few ulp, well inside allclose's default 1e-5 relative
    assert torch.allclose(ClipScorer.clip_score(a, b), torch.tensor([100 / 2 ** 0.5, 0.0]))


def test_user_named_open_clip_model_loads_from_a_local_file(tmp_path):
    arch = register_tiny_open_clip(tmp_path)
    scorer = ClipScorer.from_open_clip(arch, str(tmp_path / "weights.safetensors"))
    assert arch in scorer.name and scorer.image_size == 16
    emb = scorer.encode_images(torch.rand(3, 3, 48, 48))
    # unit norm up to float32 rounding of the normalisation (~1e-7)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(CheckpointError, match="no architecture"):
        ClipScorer.from_open_clip("No-Such-Arch", None)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load open_clip"):
        ClipScorer.from_open_clip(arch, str(tmp_path / "bad.safetensors"))


def test_missing_or_corrupt_minicanvas_clip(tmp_path):
    with pytest.raises(CheckpointError, match="no MiniCanvas CLIP"):
        ClipScorer.from_minicanvas(tmp_path)
    (tmp_path / CLIP_CONFIG).write_text(json.dumps({"model_cfg": tiny_clip_config()}))
    save_file({"x": torch.zeros(1)}, tmp_path / CLIP_WEIGHTS)
    with pytest.raises(CheckpointError, match="corrupt MiniCanvas CLIP"):
        ClipScorer.from_minicanvas(tmp_path)
