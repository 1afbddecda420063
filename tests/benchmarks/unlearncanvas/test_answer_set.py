import numpy as np
import pytest
from PIL import Image

from benchmarks.unlearncanvas.answer_set import (
    MANIFEST, AnswerSetError, SamplerSettings, answer_grid, check_answer_folder, generate_answer_set, read_answer_set)
from benchmarks.unlearncanvas.protocol import parse_answer_file_name
from erase.concepts import SEEDS, UNLEARNCANVAS, Domain
from pipelines.stable_diffusion import generate

TOY = Domain("toy", themes=("Fire", "Photo"), objects=("Fish", "Star"), photo_theme="Photo", seeds=(188, 288))


@pytest.fixture
def pipe(tiny_pipe):
    """The session's tiny DDIM pipeline: generation reads its weights and never changes them."""
    return tiny_pipe


def settings(**kw):
    return SamplerSettings(**{"steps": 2, "guidance_scale": 3.0, "seeds": list(TOY.seeds), **kw})


def test_official_grid_and_names():
    items = answer_grid(UNLEARNCANVAS, SEEDS)
    assert len(items) == 51 * 20 * 5
    names = {it.file_name("jpg") for it in items}
    assert "Crayon_Dogs_seed188.jpg" in names and "Van_Gogh_Architectures_seed888.jpg" in names
    photo = next(it for it in items if it.theme == "Seed_Images")
    assert photo.prompt == "A Architectures image in Photo style." and photo.file_name("jpg").startswith("Seed_Images_")
    assert all(parse_answer_file_name(it.file_name("jpg"))[:2] == (it.theme, it.obj) for it in items[:60])
    assert answer_grid(UNLEARNCANVAS, SEEDS, "Seed Images")[0].prompt.endswith("in Abstractionism style.")


def test_killed_run_resumes_without_regenerating(tmp_path, pipe):
    folder = tmp_path / "answers"
    s = settings()
    check_answer_folder(folder, s, "tiny")

    def kill(done):
        raise KeyboardInterrupt  # stands for a kill after the first batch

    with pytest.raises(KeyboardInterrupt):
        generate_answer_set(pipe, folder, TOY, s, "tiny", batch_size=3, on_batch=kill, progress=False)
    first = sorted(p for p in folder.glob("*.png"))
    assert len(first) == 3 and not list(folder.glob(".*.tmp"))
    stamps = {p.name: p.stat().st_mtime_ns for p in first}
    check_answer_folder(folder, s, "tiny")
    stats = generate_answer_set(pipe, folder, TOY, s, "tiny", batch_size=3, progress=False)
    assert stats["generated"] == 5 and stats["reused"] == 3 and stats["total"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in first} == stamps  # finished images untouched
    answer = read_answer_set(folder, TOY, TOY.seeds, "png")
    assert len(answer) == 8 and list(answer.themes) == [0, 0, 1, 1] * 2
    # an image depends only on its prompt and seed, not on the batch it was drawn in: drawn alone it
    # matches the one drawn in a batch of 3 within 1 grey level. Not bit for bit: BLAS kernels may
    # block a batch of 1 and of 3 differently, so float sums can round differently in the last bit,
    # which can move a pixel across a rounding boundary (tests/pipelines/test_stable_diffusion.py
    # tests the same property of generate() with the same tolerance).
    it = answer_grid(TOY, TOY.seeds)[5]
    alone = generate(pipe, [it.prompt], [it.seed], steps=2, guidance_scale=3.0)[0]
    in_batch = np.asarray(Image.open(folder / it.file_name("png")))
    assert np.abs(in_batch.astype(int) - alone.astype(int)).max() <= 1
    other = generate(pipe, [it.prompt], [it.seed + 1], steps=2, guidance_scale=3.0)[0]
    assert np.abs(in_batch.astype(int) - other.astype(int)).max() > 1  # the check can fail: the seed shows


def test_processes_split_the_work(tmp_path, pipe):
    folder = tmp_path / "a"
    s = settings()
    check_answer_folder(folder, s, "tiny")
    a = generate_answer_set(pipe, folder, TOY, s, "tiny", batch_size=8, process_index=0, num_processes=3,
                            progress=False)
    b = generate_answer_set(pipe, folder, TOY, s, "tiny", batch_size=8, process_index=1, num_processes=3,
                            progress=False)
    assert a["generated"] == 3 and b["generated"] == 2  # b saw 5 missing, took every third from index 1
    assert len(list(folder.glob("*.png"))) == 5


def test_other_settings_empty_and_incomplete_folders_are_refused(tmp_path, pipe):
    folder = tmp_path / "a"
    check_answer_folder(folder, settings(), "tiny")
    assert (folder / MANIFEST).is_file()
    with pytest.raises(AnswerSetError, match="steps=2"):
        check_answer_folder(folder, settings(steps=3), "tiny")
    with pytest.raises(AnswerSetError, match="holds no answer-set images"):
        read_answer_set(folder, TOY, TOY.seeds)
    Image.new("RGB", (8, 8)).save(folder / "Fire_Fish_seed188.png")
    with pytest.raises(AnswerSetError, match="lacks 7 of 8"):
        read_answer_set(folder, TOY, TOY.seeds)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("x")
    with pytest.raises(AnswerSetError, match="not empty"):
        check_answer_folder(tmp_path / "b", settings(), "tiny")
