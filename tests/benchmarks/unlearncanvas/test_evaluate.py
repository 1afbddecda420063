import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.unlearncanvas.answer_set import AnswerSetError, load_images, read_answer_set
from benchmarks.unlearncanvas.evaluate import SCHEMA, EvalConfig, Results, evaluate
from benchmarks.unlearncanvas.judges import REFERENCE_PER_CELL, Judges, Reference, load_reference, reference_sha256
from benchmarks.unlearncanvas.protocol import answer_file_name
from benchmarks.unlearncanvas.report import GRID_PNG, RESULTS_JSON, RESULTS_MD
from benchmarks.unlearncanvas.scorers.clip import ClipScorer
from benchmarks.unlearncanvas.scorers.fid import ClipFeatures, frechet_distance
from erase.concepts import MINICANVAS, UNLEARNCANVAS
from erase.data.layout import read_layout, reference_images
from erase.data.minicanvas import write_dataset
from pipelines.recipes.minicanvas_sd import RecipeConfig
from tests.benchmarks.unlearncanvas.scorers.test_clip import register_tiny_open_clip

KEYS = ["schema", "label", "domain", "model", "targets", "summary", "answer_set", "classifier", "accuracy", "clip",
        "fid", "robustness", "efficiency", "comparable", "hardware", "torch", "seconds"]  # results.json keys, in order
ROW_KEYS = ["target", "kind", "UA", "IRA", "CRA", "forget_images", "retain_images", "clip_removal_accuracy",
            "clip_score_retained", "clip_score_forget", "fid", "fid_generated", "fid_reference",
            "UA_base", "UA_change", "clip_removal_accuracy_base", "clip_removal_accuracy_change",
            "clip_score_retained_base", "clip_score_retained_change", "clip_score_forget_base",
            "clip_score_forget_change"]


def test_evaluate_a_pipeline_in_memory(tiny_eval):
    res, out = tiny_eval.results, tiny_eval.out
    assert res.to_json() == json.loads((out / RESULTS_JSON).read_text())  # the file is the object
    assert list(res.to_json()) == KEYS and res.schema == SCHEMA
    assert Results.from_json(res.to_json()) == res
    assert res.answer_set["images"] == 110 and res.answer_set["generated"] == 110
    assert res.answer_set["steps"] == 2 and res.answer_set["guidance_scale"] == 3.0
    # on a CPU the batch stays the default 64 images per generate call (erase.memory), with its reason
    assert res.answer_set["batch"]["batch"] == 64 and res.answer_set["batch"]["chosen_by"] == "default"
    assert [t["target"] for t in res.targets] == ["Fire", "Fish"] and res.target("fish") is res.targets[1]
    for t, kept in zip(res.targets, (100, 99)):  # Fire's 10 cells, Fish's 11 cells left out
        assert list(t) == ROW_KEYS
        assert all(0 <= t[k] <= 1 for k in ("UA", "IRA", "CRA", "clip_removal_accuracy"))
        assert t["fid_generated"] == kept and t["fid_reference"] == 5 * kept
        assert t["forget_images"] + t["retain_images"] == 110
    style = res.targets[0]
    assert style["UA"] == 1 - res.accuracy["style"]["Fire"]  # both one float subtraction: exact
    # CRA is the mean of the 10 per-object accuracies; np.mean vs the metric's own mean: same order, exact
    assert style["CRA"] == pytest.approx(np.mean(list(res.accuracy["object"].values())), rel=1e-12)
    assert "Frechet CLIP distance" in res.fid["features"] and res.fid["kind"] == "clip"
    assert res.fid["all_cells"]["generated"] == 110 and res.fid["all_cells"]["reference"] == 550
    assert res.classifier["name"].startswith("MiniCanvas classifier") and res.hardware
    assert res.efficiency is None and res.label == "base"
    assert res.model["base"] == "in-memory pipeline" and len(res.model["sha256_16"]) == 16
    assert (out / GRID_PNG).is_file() and "| Fire | style |" in (out / RESULTS_MD).read_text()
    assert (out / "answer_set" / "Candy_Arrow_seed188.png").is_file()
    with pytest.raises(KeyError, match="not a target"):
        res.target("Candy")


def test_per_target_fid_is_the_frechet_distance_of_the_kept_images(tiny_eval, minicanvas_judges):
    """Meaning kept from the feature-list implementation: the target's cells are left out on both sides."""
    res, out = tiny_eval.results, tiny_eval.out
    clip, ref = minicanvas_judges.clip, minicanvas_judges.reference
    answer = read_answer_set(out / "answer_set", MINICANVAS, [188], "png")
    fake = clip.encode_images(load_images(answer.paths)).double()  # one batch of 110, as the scorer reads it
    size = res.fid["reference_images_resized_to"]
    assert size == Image.open(answer.paths[0]).size[0] == 16  # the tiny model draws 16 px
    real = torch.cat([ClipFeatures(clip)(load_images(ref.paths[i:i + 256], size=size))
                      for i in range(0, len(ref.paths), 256)])  # the scorer's chunks of 256
    # same features, float64 statistics summed per cell instead of at once: rounding only (see test_fid.AGREE)
    assert res.fid["all_cells"]["value"] == pytest.approx(frechet_distance(real, fake), rel=1e-9)
    fire, fish = MINICANVAS.themes.index("Fire"), MINICANVAS.objects.index("Fish")
    keep_real, keep_fake = torch.from_numpy(ref.themes != fire), torch.from_numpy(answer.themes != fire)
    assert res.targets[0]["fid"] == pytest.approx(frechet_distance(real[keep_real], fake[keep_fake]), rel=1e-9)
    keep_real, keep_fake = torch.from_numpy(ref.objects != fish), torch.from_numpy(answer.objects != fish)
    assert res.targets[1]["fid"] == pytest.approx(frechet_distance(real[keep_real], fake[keep_fake]), rel=1e-9)
    assert res.targets[0]["fid"] != res.targets[1]["fid"]


def test_a_second_run_reuses_every_image_and_other_weights_are_refused(tiny_eval, tiny_pipe, fresh_tiny_pipe,
                                                                          minicanvas_judges, tmp_path):
    first = tiny_eval.results
    again = evaluate(tiny_pipe, tiny_eval.rerun_config(tmp_path / "again"),
                     judges=minicanvas_judges)
    assert again.answer_set["generated"] == 0 and again.answer_set["reused"] == 110
    # same images, same judges, same batches in one process: the same floats
    assert again.targets == first.targets and again.accuracy == first.accuracy
    with torch.no_grad():
        fresh_tiny_pipe.unet.conv_out.bias.add_(0.1)
    with pytest.raises(AnswerSetError, match="was generated with model="):
        evaluate(fresh_tiny_pipe, tiny_eval.rerun_config(tmp_path / "other"),
                 judges=minicanvas_judges)
    assert not (tmp_path / "other").exists()


class FirstLabelJudge:
    """Stands in for the ViT-L/16 judges (tested in scorers/test_classifier.py): always predicts label 0."""

    themes, objects = UNLEARNCANVAS.themes, UNLEARNCANVAS.objects

    def predict(self, images):
        return torch.zeros(len(images), dtype=torch.long), torch.zeros(len(images), dtype=torch.long)


@pytest.mark.slow
def test_unlearncanvas_layout_with_real_names_is_scored(tmp_path, fake_unlearncanvas):
    """Official names and label order end to end: fake dataset, fake answer set, open_clip by name."""
    answers = tmp_path / "answers"
    answers.mkdir()
    rng = np.random.default_rng(1)
    for t in UNLEARNCANVAS.themes:
        for o in UNLEARNCANVAS.objects:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                answers / answer_file_name(t, o, 188, "jpg"))
    arch = register_tiny_open_clip(tmp_path / "clip")
    cfg = EvalConfig(domain="unlearncanvas", answer_dir=answers, seeds=[188], targets=["Van Gogh", "Dogs"],
                     clip_model=arch, clip_pretrained=str(tmp_path / "clip" / "weights.safetensors"),
                     dataset=fake_unlearncanvas, out=tmp_path / "out", device="cpu", progress=False)
    clip = ClipScorer.from_open_clip(arch, cfg.clip_pretrained)
    judges = Judges(FirstLabelJudge(), "first-label judge", clip, ClipFeatures(clip),
                    load_reference(cfg, UNLEARNCANVAS))
    res = evaluate(None, cfg, judges=judges).to_json()
    assert res == json.loads((tmp_path / "out" / RESULTS_JSON).read_text())
    van_gogh, dogs = res["targets"]
    assert van_gogh["target"] == "Van_Gogh" and dogs["kind"] == "object"
    # the judge is right only on Abstractionism (style) and Architectures (object); 1/49 etc. are one
    # division of integer counts each, approx only for the decimal literals' own rounding
    assert van_gogh["UA"] == 1 and van_gogh["IRA"] == pytest.approx(1 / 49) and van_gogh["CRA"] == pytest.approx(1 / 20)
    assert dogs["UA"] == 1 and dogs["IRA"] == pytest.approx(1 / 19) and dogs["CRA"] == pytest.approx(1 / 50)
    assert van_gogh["fid_reference"] == 5000 and dogs["fid_reference"] == 4845  # the protocol's sizes
    assert list(res["accuracy"]["style"])[38] == "Seed_Images" and len(res["accuracy"]["object"]) == 20
    assert res["classifier"]["images_per_theme"] == 20 and res["classifier"]["images_per_object"] == 51
    assert res["answer_set"]["prompt_template"] == UNLEARNCANVAS.prompt("{style}", "{object}")
    assert arch in res["clip"]["scorer"] and arch in res["fid"]["features"]
    assert res["model"]["note"].startswith("score-only") and res["answer_set"]["generated"] == 0


def test_config_defaults_follow_the_domain(tmp_path):
    mc = EvalConfig(out=tmp_path).resolved()
    assert (mc.steps, mc.guidance, mc.ext, list(mc.seeds)) == (25, 5.0, "png", [188, 288, 588, 688, 888])
    assert mc.targets == list(MINICANVAS.styles + MINICANVAS.objects) and mc.answer_dir == tmp_path / "answer_set"
    uc = EvalConfig(domain="unlearncanvas", answer_dir=tmp_path, targets=["van gogh", "Van_Gogh"]).resolved()
    assert (uc.steps, uc.guidance, uc.ext, uc.targets, uc.out) == (100, 9.0, "jpg", ["Van_Gogh"], None)
    assert EvalConfig(out=tmp_path).resolved(concept="candy").targets == ["Candy"]  # an artifact's concept
    one = EvalConfig(out=tmp_path, targets="fish", seeds=7).resolved()  # a single name or seed, not a list
    assert one.targets == ["Fish"] and one.seeds == [7]
    assert copy.deepcopy(mc).resolved() == mc  # resolving twice changes nothing


@pytest.mark.parametrize("fields,message", [
    ({"steps": 0}, "must be positive"), ({"seeds": [1, 1]}, "distinct"), ({"grid_seed": 5}, "not one of --seeds"),
    ({"out": None}, "give an output folder"), ({"domain": "mnist"}, "unknown domain"), ({"ext": "gif"}, "ext must"),
    ({"targets": ["Van_Gogh"]}, "not a style or object of minicanvas")])
def test_config_errors_are_one_line(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**{"out": tmp_path / "out", **fields}).resolved()
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        EvalConfig(out=tmp_path / "file").resolved()


def test_judges_of_another_domain_are_refused(tiny_pipe, minicanvas_judges, tmp_path):
    with pytest.raises(ValueError, match="do not match the unlearncanvas domain"):
        evaluate(tiny_pipe, EvalConfig(domain="unlearncanvas", out=tmp_path / "out"), judges=minicanvas_judges)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="loads no model"):
        evaluate(None, EvalConfig(out=tmp_path / "out"), model_info={"artifact": "erased/esd-candy"})
    assert not (tmp_path / "out").exists()


def test_the_minicanvas_reference_is_rendered_once_and_equals_a_fresh_render(minicanvas_judges, tmp_path):
    """Every judge load of a process reads the same renders; they hash as a render made now does."""
    again = load_reference(EvalConfig(device="cpu"), MINICANVAS)
    assert again.paths == minicanvas_judges.reference.paths
    fresh = write_dataset(tmp_path / "fresh", per_cell=REFERENCE_PER_CELL, seed=RecipeConfig().data_seed)
    paths = reference_images(read_layout(fresh, MINICANVAS), indices=range(1, REFERENCE_PER_CELL + 1))
    assert len(paths) == len(again.paths) == 110 * REFERENCE_PER_CELL
    assert reference_sha256(Reference(paths, None, None, "")) == minicanvas_judges.hashes["fid_reference"]


def test_reference_features_are_computed_once_per_judges(minicanvas_judges):
    judges = dataclasses.replace(minicanvas_judges, _reference_features={})  # the session's judges stay as they are
    space, calls = judges.fid_space, []
    judges.fid_space = lambda x: (calls.append(len(x)), space(x))[1]
    first = judges.reference_features([0, 1, 2], 32)
    second = judges.reference_features([1, 2, 3], 32)
    assert calls == [3, 1]  # images 1 and 2 were not computed again
    assert torch.equal(first[1:], second[:2])  # the same stored tensors
    direct = space(load_images(judges.reference.paths[:3], size=32))
    # the same images through the same network in the same batch: equal up to float32 rounding
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-6)
