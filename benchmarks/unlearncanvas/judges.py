"""The judges of one evaluation, loaded from an ``EvalConfig`` before any image is generated.

Style/object classifier, CLIP scorer, FID feature space and the FID reference set: a wrong path
or a missing file fails here, in seconds, with one line. The MiniCanvas reference set is
rendered into a temporary folder from the embedded model's training seed, once per process, and
removed when the process exits.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.unlearncanvas.answer_set import load_images
from benchmarks.unlearncanvas.config import EvalConfig, UsageError
from benchmarks.unlearncanvas.scorers.classifier import StyleObjectClassifier, UnlearnCanvasClassifier
from benchmarks.unlearncanvas.scorers.clip import ClipScorer
from benchmarks.unlearncanvas.scorers.fid import ClipFeatures, InceptionFeatures
from erase.concepts import Domain
from erase.data.layout import read_layout, reference_images
from erase.data.minicanvas import write_dataset
from erase.provenance import file_sha256, module_sha256, relative_path
from pipelines.judges import MINICANVAS_CLASSIFIER_DIR, MINICANVAS_CLIP_DIR, MiniCanvasClassifier
from pipelines.recipes.minicanvas_sd import RecipeConfig

REFERENCE_PER_CELL = 5  # the protocol's FID reference: images 1-5 of every style/object folder


@dataclass
class Reference:
    """The FID reference set: image paths with their theme and object label indices."""

    paths: list[Path]
    themes: np.ndarray
    objects: np.ndarray
    description: str


@dataclass
class Judges:
    classifier: StyleObjectClassifier
    classifier_name: str
    clip: ClipScorer | None = None
    fid_space: ClipFeatures | InceptionFeatures | None = None
    reference: Reference | None = None
    # content hashes (first 16 hex digits) of every judge's weights and of the reference set: what makes two
    # results comparable, whatever the files are called (leaderboard.comparability)
    hashes: dict[str, str | None] = field(default_factory=dict)
    _reference_features: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def reference_features(self, indices: Sequence[int], size: int) -> torch.Tensor:
        """FID features of the reference images ``indices`` resized to ``size`` px, each computed once per
        ``Judges``: a figure script scores many models against one reference set with the same judges."""
        missing = [i for i in indices if (size, i) not in self._reference_features]
        if missing:
            features = self.fid_space(load_images([self.reference.paths[i] for i in missing], size=size))
            self._reference_features.update({(size, i): f for i, f in zip(missing, features)})
        return torch.stack([self._reference_features[(size, i)] for i in indices])


def load_classifier(config: EvalConfig, domain: Domain, device: torch.device | str
                    ) -> tuple[StyleObjectClassifier, str]:
    if config.style_classifier or config.object_classifier:
        if not (config.style_classifier and config.object_classifier):
            raise UsageError("--style-classifier and --object-classifier go together")
        judge = UnlearnCanvasClassifier(config.style_classifier, config.object_classifier, config.classifier_arch,
                                        device)
        name = (f"UnlearnCanvas {config.classifier_arch} ({Path(config.style_classifier).name}, "
                f"{Path(config.object_classifier).name})")
    elif domain.name == "unlearncanvas":
        raise UsageError("the unlearncanvas domain needs --style-classifier and --object-classifier "
                         "(the released style50.pth and style50_cls.pth)")
    else:
        folder = Path(config.classifier or MINICANVAS_CLASSIFIER_DIR)
        judge = MiniCanvasClassifier.from_pretrained(folder).to(device)
        name = f"MiniCanvas classifier ({folder.name})"
    if tuple(judge.themes) != domain.themes or tuple(judge.objects) != domain.objects:
        raise UsageError(f"the classifier's labels do not match the {domain.name} domain")
    return judge, name


def load_clip(config: EvalConfig, domain: Domain, device: torch.device | str) -> ClipScorer | None:
    if not config.use_clip:
        return None
    if config.clip_model:
        return ClipScorer.from_open_clip(config.clip_model, config.clip_pretrained, device)
    if config.clip_pretrained:
        raise UsageError("--clip-pretrained needs --clip-model")
    if domain.name != "minicanvas":
        raise UsageError("the embedded CLIP knows only MiniCanvas; name --clip-model/--clip-pretrained "
                         "or pass --no-clip")
    return ClipScorer.from_minicanvas(config.clip_dir or MINICANVAS_CLIP_DIR, device)


def load_fid_space(config: EvalConfig, clip: ClipScorer | None, device: torch.device | str
                   ) -> ClipFeatures | InceptionFeatures | None:
    if not config.use_fid:
        return None
    if config.inception_weights:
        return InceptionFeatures(config.inception_weights, device)
    if clip is None:
        raise UsageError("FID without --inception-weights uses CLIP image features; drop --no-clip or pass --no-fid")
    return ClipFeatures(clip)


@functools.lru_cache(maxsize=2)
def _minicanvas_reference(seed: int, per_cell: int) -> Path:
    """The MiniCanvas reference renders, drawn once per process and removed at its exit.

    Rendering is deterministic in the seed and takes most of a judge load (0.6 s of 0.8 s), and a figure
    script or the test suite loads the judges many times; its files are only read, and every load hashes
    them again (``reference_sha256``), so a changed file would show in the results.
    """
    folder = tempfile.mkdtemp(prefix="minicanvas-reference-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_dataset(Path(folder) / "renders", per_cell=per_cell, seed=seed)


def load_reference(config: EvalConfig, domain: Domain) -> Reference:
    """The protocol's FID reference set (every cell; the scorer leaves a target's cells out)."""
    if config.dataset:
        root, desc = Path(config.dataset), relative_path(config.dataset)
    elif domain.name == "minicanvas":
        seed = RecipeConfig().data_seed
        root = _minicanvas_reference(seed, REFERENCE_PER_CELL)
        desc = f"MiniCanvas renders, data seed {seed} (the embedded model's training seed)"
    else:
        raise UsageError("FID on the unlearncanvas domain needs --dataset (the UnlearnCanvas folder) or --no-fid")
    paths = reference_images(read_layout(root, domain), indices=range(1, REFERENCE_PER_CELL + 1))
    themes = np.array([domain.themes.index(p.parent.parent.name) for p in paths])
    objects = np.array([domain.objects.index(p.parent.name) for p in paths])
    return Reference(paths, themes, objects, f"{desc}: images 1-{REFERENCE_PER_CELL} of every style/object folder, "
                                             f"erased target's cells excluded")


def reference_sha256(reference: Reference) -> str:
    """Content hash of a reference set: each image's <Style>/<Object>/<name> and its bytes, in order."""
    h = hashlib.sha256()
    for p in reference.paths:
        h.update(f"{p.parent.parent.name}/{p.parent.name}/{p.name}:{file_sha256(p)};".encode())
    return h.hexdigest()[:16]


def classifier_sha256(classifier: StyleObjectClassifier) -> str:
    """Content hash of a style/object classifier's weights (both networks for the UnlearnCanvas pair)."""
    modules = [classifier] if isinstance(classifier, torch.nn.Module) else [classifier.style_model,
                                                                           classifier.object_model]
    return hashlib.sha256("".join(module_sha256(m) for m in modules).encode()).hexdigest()[:16]


def load_judges(config: EvalConfig, device: torch.device | str = "cpu") -> Judges:
    """Every judge of the config, in the order a user would fix them: classifier, CLIP, FID, reference."""
    domain = config.spec
    classifier, name = load_classifier(config, domain, device)
    clip = load_clip(config, domain, device)
    fid_space = load_fid_space(config, clip, device)
    clip_hash = module_sha256(clip.model)[:16] if clip is not None else None
    judges = Judges(classifier, name, clip, fid_space,
                    hashes={"classifier": classifier_sha256(classifier), "clip": clip_hash})
    if fid_space is not None:
        judges.hashes["fid_features"] = (clip_hash if isinstance(fid_space, ClipFeatures)
                                         else file_sha256(config.inception_weights)[:16])
        judges.reference = load_reference(config, domain)
        judges.hashes["fid_reference"] = reference_sha256(judges.reference)
    return judges
