"""Session fixtures of the benchmark tests: a fake UnlearnCanvas download, the MiniCanvas judges, one evaluation.

They are built once per session because each costs a second or more; tests read them and never
write into their folders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import pytest

from benchmarks.unlearncanvas.evaluate import EvalConfig, Results, evaluate
from benchmarks.unlearncanvas.judges import load_judges

@pytest.fixture(scope="session")
def minicanvas_judges():
    """The embedded world's judges (shipped classifier and CLIP, rendered reference set), loaded once."""
    with load_judges(EvalConfig(device="cpu")) as judges:
        yield judges


class TinyEval(NamedTuple):
    results: Results
    out: Path
    config: EvalConfig

    def rerun_config(self, out: Path) -> EvalConfig:
        """The same settings, reports to ``out``, the same answer set (resumed, not drawn again)."""
        return dataclasses.replace(self.config, out=out, answer_dir=self.out / "answer_set")


@pytest.fixture(scope="session")
def tiny_eval(tiny_pipe, minicanvas_judges, tmp_path_factory) -> TinyEval:
    """evaluate() on the tiny pipeline: one seed (110 images), 2 DDIM steps, a style and an object target."""
    out = tmp_path_factory.mktemp("uc-eval") / "base"
    config = EvalConfig(targets=["Fire", "fish"], seeds=[188], steps=2, guidance=3.0, out=out, device="cpu",
                        progress=False)  # the object spelled as a user might
    return TinyEval(evaluate(tiny_pipe, config, judges=minicanvas_judges), out, config)

