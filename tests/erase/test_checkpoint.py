import torch

from erase import checkpoint as ckpt


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, opt, gen, steps):
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    model, opt = _model_and_opt()
    gen = torch.Generator().manual_seed(1)
    _train(model, opt, gen, 10)

    model2, opt2 = _model_and_opt()
    gen2 = torch.Generator().manual_seed(1)
    _train(model2, opt2, gen2, 4)
    o_t, o_meta = ckpt.optimizer_tensors(opt2)
    ckpt.save_checkpoint(tmp_path / "c", {**ckpt.module_tensors(model2, "m"), **o_t, **ckpt.rng_tensors(gen2)},
                         {"step": 4, "optimizer": o_meta})

    model3, opt3 = _model_and_opt(seed=123)  # a fresh process: different init, restored from disk
    gen3 = torch.Generator().manual_seed(999)
    tensors, meta = ckpt.load_checkpoint(tmp_path / "c")
    ckpt.load_module(model3, tensors, "m")
    ckpt.load_optimizer(opt3, tensors, meta["optimizer"])
    ckpt.load_rng(tensors, gen3)
    _train(model3, opt3, gen3, 6)
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_missing_or_partial_checkpoint_is_none(tmp_path):
    assert ckpt.load_checkpoint(tmp_path / "nothing") is None
    (tmp_path / "c.tmp").mkdir()
    assert ckpt.load_checkpoint(tmp_path / "c") is None
    assert list(p.name for p in (tmp_path).iterdir()) == ["c.tmp"]


def test_checkpoint_writes_only_safetensors_and_json(tmp_path):
    model, opt = _model_and_opt()
    ckpt.save_checkpoint(tmp_path / "c", ckpt.module_tensors(model, "m"), {"step": 0})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["state.json", "state.safetensors"]
