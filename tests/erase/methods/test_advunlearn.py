"""AdvUnlearn on tiny components: prefix embeddings, the inner attack's isolation, layer selection, retain
filtering, resume, the artifact in plain diffusers, plug-in transfer, and refusals."""

import json
import warnings

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from erase.artifacts import ArtifactError, TransferWarning
from erase.attacks.tokens import encode, with_tokens
from erase.cli import main
from erase.concepts import resolve_concept
from erase.loading import load_erased_pipeline
from erase.methods import get_method
from erase.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig, select
from erase.methods.config import build_config
from erase.sampling import encode_prompts
from erase.trainer import TrainerConfig, train
from pipelines.stable_diffusion import generate
from tests.conftest import copy_pipe, tiny_sd_components

FAST = ["--steps", "3", "--threads", "1", "--quiet", "ddim_steps=3", "warmup=1", "attack_steps=2", "retain_batch=2",
        "lr=1e-2"]


@pytest.fixture
def make(tiny_pipe):
    def build(concept="Candy", **options):
        config = build_config(AdvUnlearnConfig, {"ddim_steps": 3, "attack_steps": 2, "retain_batch": 2,
                                                 "warmup": 1, "lr": 1e-2, **options})
        return AdvUnlearn(config, resolve_concept(concept), copy_pipe(tiny_pipe))
    return build


def test_defaults_are_the_reference_setting_and_registry_finds_it():
    cfg = AdvUnlearnConfig()
    assert (cfg.steps, cfg.lr, cfg.component, cfg.negative_guidance, cfg.start_guidance, cfg.ddim_steps) == \
        (1000, 1e-5, "full", 1.0, 3.0, 50)
    assert (cfg.retain_train, cfg.retain_batch, cfg.gamma, cfg.retain_prompts) == ("reg", 5, 0.3, "coco-objects")
    assert (cfg.attack_method, cfg.attack_tokens, cfg.attack_init, cfg.attack_steps, cfg.attack_lr, cfg.warmup,
            cfg.attack_every, cfg.insertion) == ("pgd", 1, "random", 30, 1e-3, 200, 1, "prefix")
    assert get_method("AdvUnlearn") is AdvUnlearn and AdvUnlearn.kind == "step"


@pytest.mark.parametrize("insertion", ["prefix", "concept"])
def test_unmodified_prefix_embeddings_reproduce_the_encoder_exactly(make, insertion):
    m = make(attack_tokens=2, insertion=insertion, prompts=["a {concept} painting"])
    m.setup(torch.Generator().manual_seed(0))
    tokens = torch.tensor([[320, 1929]])  # two ordinary vocabulary ids in the slots
    te = m.text_encoder
    with torch.no_grad():
        plain = te(with_tokens(m.ids, m.slots, tokens))[0]
        substituted = encode(te, m.ids, m.slots, m.embedding[tokens])
    assert torch.equal(plain, substituted)  # the same embeddings through the same ops: bit-identical
    slot = int(m.slots[0, 0])
    assert slot == (1 if insertion == "prefix" else 2)  # after SOT, or after "a" and before "candy"


def test_the_attack_moves_delta_only_and_leaves_no_gradient_on_the_encoder(make):
    m = make(attack_steps=3, attack_lr=1e-1)
    m.setup(torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in m.params.items()}
    start = m.delta.clone()
    gen = torch.Generator().manual_seed(1)
    _, t, z = m._draw(gen, 1, m.cond0[:1])
    new = m.attack(0, z, t, gen)
    assert all(p.grad is None for p in m.params.values())  # nothing left for the outer step to pick up
    assert all(torch.equal(p, before[n]) for n, p in m.params.items())  # untouched: exactly equal is the point
    assert not torch.equal(new, start) and not new.requires_grad


def test_fast_at_steps_on_the_sign_of_the_gradient(make):
    m = make(attack_method="fast_at", attack_steps=1, attack_lr=0.5, attack_init="latest")
    m.setup(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    _, t, z = m._draw(gen, 1, m.cond0[:1])
    moved = (m.attack(0, z, t, gen) - m.delta).abs()
    # Adam's first step on a sign is lr * sign / (|sign| + eps): every coordinate moves by lr
    torch.testing.assert_close(moved, torch.full_like(moved, 0.5), rtol=1e-4, atol=1e-4)


def test_layers_are_selected_by_exact_index():
    te = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=12,
                                      num_attention_heads=2, max_position_embeddings=16))
    names = [n for n, _ in te.named_parameters()]

    def picked(component, layers):
        keep = select(component, layers, 12)
        return {n for n in names if keep(n)}

    one = picked("full", [1])
    assert one and all(".layers.1." in n for n in one)  # not 10 or 11, the reference's prefix bug
    full = picked("full", [])
    assert any("final_layer_norm" in n for n in full) and not any("embeddings" in n for n in full)
    assert len(full) == len(names) - 2  # all but the token and position embeddings
    assert picked("attn", [0, 11]) == {n for n in names if ".self_attn." in n and (".layers.0." in n or ".layers.11." in n)}
    assert picked("ffn", []) == {n for n in names if ".mlp." in n}


def test_killed_run_resumes_to_identical_weights_and_delta(make, tmp_path):
    options = {"attack_init": "latest", "warmup": 1}
    cfg = TrainerConfig(steps=4, seed=2, checkpoint_every=2, progress=False)
    straight = make(**options)
    train(straight, cfg, tmp_path / "a")
    killed = make(**options)
    step = killed.training_step
    killed.training_step = lambda ctx: (_ for _ in ()).throw(KeyboardInterrupt) if ctx.step == 3 else step(ctx)
    with pytest.raises(KeyboardInterrupt):
        train(killed, cfg, tmp_path / "b")
    resumed = make(**options)
    assert train(resumed, cfg, tmp_path / "b", resume=True).resumed_from == 2
    # bit-identical on purpose: the same run resumed on the same machine
    assert torch.equal(straight.delta, resumed.delta) and int(resumed.rounds) == 3
    assert all(torch.equal(p, resumed.params[n]) for n, p in straight.params.items())
    fresh = make(**options)
    fresh.setup(torch.Generator().manual_seed(0))
    assert any(not torch.equal(p, fresh.params[n]) for n, p in straight.params.items())


def test_iter_retain_training_takes_extra_steps(make):
    m = make(retain_train="iter", retain_step=2)
    result = train(m, TrainerConfig(steps=2, progress=False))
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_artifact_is_a_whole_text_encoder_that_plain_diffusers_loads(tiny_sd_dir, tiny_pipe, tmp_path, capsys):
    out = tmp_path / "adv"
    assert main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output", str(out),
                 "retain_prompts=domain", *FAST]) == 0
    record = json.loads((out / "erase.json").read_text())
    assert list(record["components"]) == ["text_encoder"] and record["components"]["text_encoder"]["format"] == "full"
    assert record["run"]["retain"]["source"] == "domain" and record["run"]["attack_rounds"] == 2
    assert record["cost"]["seconds"] > 0 and record["cost"]["peak_memory_bytes"] > 0 and record["cost"]["artifact_bytes"] > 0
    ours = load_erased_pipeline(out)
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir), text_encoder=CLIPTextModel.from_pretrained(
        out / "text_encoder"), safety_checker=None)
    for a, b in zip(ours.text_encoder.parameters(), plain.text_encoder.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(ours.text_encoder.parameters(),
                                                      tiny_pipe.text_encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ours.unet.parameters(), tiny_pipe.unet.parameters()))


def test_plug_in_transfer_warns_on_another_base_and_refuses_other_shapes(tiny_sd_dir, clip_tokenizer, tmp_path):
    out = tmp_path / "adv"
    assert main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output", str(out),
                 "retain_prompts=domain", *FAST]) == 0
    other = tmp_path / "other"  # same architecture, other weights (another seed)
    StableDiffusionPipeline(**tiny_sd_components(clip_tokenizer, seed=5)).save_pretrained(other)
    with pytest.warns(TransferWarning, match="plug-in transfer"):
        pipe = load_erased_pipeline(out, model=other)
    own = load_erased_pipeline(out).text_encoder.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in pipe.text_encoder.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TransferWarning)
        load_erased_pipeline(out, model=tiny_sd_dir)  # its own base, named explicitly: no warning
    wide = tiny_sd_components(clip_tokenizer)
    wide["text_encoder"] = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    StableDiffusionPipeline(**wide).save_pretrained(tmp_path / "wide")
    with pytest.raises(ArtifactError, match="shape") as err, pytest.warns(TransferWarning):
        load_erased_pipeline(out, model=tmp_path / "wide")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("option,message", [
    ("component=mlp", "unknown component 'mlp'"),
    ("attack_tokens=0", "attack_tokens must be at least 1"),
    ("gamma=-0.5", "gamma >= 0"),
    ("layers=1,x", "integer layer indices"),
    ("retain_prompts=ONLY", "no retain prompt is left"),
    ("retain_prompts=/no/such/file.txt", "neither coco-objects, domain nor a text file"),
    ("attack_method=pgd2", "unknown attack_method"),
])
def test_bad_options_are_one_error_line_exit_2_and_nothing_written(option, message, tiny_sd_dir, tmp_path, capsys):
    if option == "retain_prompts=ONLY":
        (tmp_path / "only.txt").write_text("a Candy painting\nCandy style\n")
        option = f"retain_prompts={tmp_path / 'only.txt'}"
    out = tmp_path / "out"
    code = main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output", str(out),
                 *FAST, option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / ".out.work").exists()


def test_a_layer_the_encoder_lacks_is_refused_with_one_line(tiny_sd_dir, tmp_path, capsys):
    code = main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output",
                 str(tmp_path / "out"), *FAST, "layers=7"])
    err = capsys.readouterr().err
    assert code == 2 and "layers [7]: this text encoder has layers 0..1" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_generation_encodes_the_empty_prompt_with_the_erased_encoder_too(tiny_sd_dir, tiny_pipe, tmp_path):
    """A text-encoder erasure also moves the CFG's empty-prompt embedding; sampling must use the erased one."""
    out = tmp_path / "adv"
    assert main(["--method", "advunlearn", "--concept", "Candy", "--model", str(tiny_sd_dir), "--output", str(out),
                 "retain_prompts=domain", *FAST, "lr=0.5"]) == 0
    pipe = load_erased_pipeline(out)
    prompt = "A Fish image in Candy style."
    drawn = generate(pipe, [prompt], [3], steps=3, guidance_scale=5.0)
    erased_empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    base_empty = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, [""])
    assert not torch.allclose(erased_empty, base_empty)
    cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])

    def by_hand(negative):
        return generate_embeds(pipe, cond, negative)

    torch.testing.assert_close(torch.from_numpy(drawn).float(), torch.from_numpy(by_hand(erased_empty)).float(),
                               atol=1.0, rtol=0)  # one grey level: the same computation
    assert (torch.from_numpy(drawn).float() - torch.from_numpy(by_hand(base_empty)).float()).abs().max() > 1


def generate_embeds(pipe, cond, negative):
    result = pipe(prompt_embeds=cond, negative_prompt_embeds=negative, num_inference_steps=3, guidance_scale=5.0,
                  generator=[torch.Generator().manual_seed(3)], height=16, width=16, output_type="np")
    return (result.images.clip(0, 1) * 255 + 0.5).astype("uint8")
