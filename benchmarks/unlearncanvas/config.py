"""``EvalConfig``: everything besides the model that decides an UnlearnCanvas evaluation.

``None`` fields take the domain's default when the config is resolved (``EvalConfig.resolved``):
sampler steps and guidance from ``protocol.SAMPLER_DEFAULTS``, the domain's five seeds, PNG for
MiniCanvas and JPEG for UnlearnCanvas, the answer set in ``<out>/answer_set``. Resolving also
checks every field that does not need a file, so a bad combination fails before anything loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from benchmarks.unlearncanvas.answer_set import read_manifest
from benchmarks.unlearncanvas.protocol import ATTACK_DEFAULTS, SAMPLER_DEFAULTS
from erase.attacks.unlearndiffatk import KINDS, AttackConfig
from erase.concepts import DOMAINS, Domain
from erase.memory import MAX_BATCH
from erase.trainer import MAX_SEED

EXTENSIONS = ("png", "jpg")
MAX_SIZE = 4096
DEFAULT_BATCH = 64  # images per generate call unless free GPU memory says fewer (erase.memory.plan_eval_batch)


class UsageError(ValueError):
    """Options that do not fit together; one line for the user."""


@dataclass
class EvalConfig:
    # protocol
    domain: str = "minicanvas"  # a key of erase.concepts.DOMAINS
    targets: Sequence[str] | None = None  # erased concepts; "all" = every concept; None = the artifact's, else all
    seeds: Sequence[int] | None = None  # None: the domain's (188 288 588 688 888)
    themes: Sequence[str] | None = None  # a subset of themes for smoke tests (None: all; results marked "subset")
    objects: Sequence[str] | None = None  # a subset of objects (None: all)
    # answer set
    steps: int | None = None  # DDIM steps; None: SAMPLER_DEFAULTS[domain]
    guidance: float | None = None  # CFG scale; None: SAMPLER_DEFAULTS[domain]
    size: int | None = None  # image size; None: the model's
    batch_size: int | None = None  # images per generate call; None: DEFAULT_BATCH, fewer when a GPU lacks memory
    ext: str | None = None  # png | jpg; None: png (minicanvas), jpg (unlearncanvas)
    photo_phrase: str | None = None  # None: "Photo"; 'Seed Images' reproduces the released unlearned-model samplers
    out: str | Path | None = None  # results.json, results.md, answer_set_grid.png; None: write no report
    answer_dir: str | Path | None = None  # None: <out>/answer_set; resumed when present
    label: str | None = None  # leaderboard row; None: the artifact's method, else "base"
    grid_seed: int | None = None  # seed shown in the PNG grid; None: the first
    # classifier: the MiniCanvas one (folder, default the shipped one) or the two UnlearnCanvas .pth files
    classifier: str | Path | None = None
    style_classifier: str | Path | None = None
    object_classifier: str | Path | None = None
    classifier_arch: str = "vit_large_patch16_224"
    # CLIP: the MiniCanvas CLIP (folder, default the shipped one) or an open_clip model by name
    use_clip: bool = True
    clip_dir: str | Path | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    # FID: Inception features from a weights file, else CLIP image features; reference dataset
    use_fid: bool = True
    dataset: str | Path | None = None  # <root>/<Style>/<Object>/<idx>.<ext>; None (minicanvas): rendered
    inception_weights: str | Path | None = None
    # robustness: the UnlearnDiffAtk attack of every target (None: no attack); None fields: the domain's default
    attack: str | None = None  # unlearndiffatk | soft
    attack_tokens: int | None = None
    attack_insertion: str | None = None  # prefix | concept
    attack_timesteps: int | None = None
    attack_steps: int | None = None  # Adam steps per timestep
    attack_prompts: int | None = None  # the first N of each target's prompts; None: all
    # the base model's figures beside every CLIP removal figure, cached per base model and settings
    baseline: bool = True
    baseline_cache: str | Path | None = None  # None: $ERASE_CACHE/baselines or ~/.cache/erase/baselines
    # run
    device: str | None = None  # None: accelerate's choice
    progress: bool = True

    @property
    def subset(self) -> dict | None:
        """What a subset run left out of the protocol's grid (None: the whole protocol); needs ``resolved``."""
        domain = self.spec
        out = {}
        if list(self.themes) != list(domain.themes):
            out["themes"] = list(self.themes)
        if list(self.objects) != list(domain.objects):
            out["objects"] = list(self.objects)
        if list(self.seeds) != list(domain.seeds):
            out["seeds"] = list(self.seeds)
        return out or None

    def answer_manifest(self) -> dict | None:
        """The ``answer_set.json`` of the folder this config scores (``answer_dir``, else ``<out>/answer_set``)."""
        folder = self.answer_dir or (Path(self.out) / "answer_set" if self.out is not None else None)
        return read_manifest(folder) if folder is not None else None

    def from_manifest(self, manifest: dict | None) -> "EvalConfig":
        """Scoring a given answer set: its sampler settings, wording and grid come from its ``answer_set.json``.

        A value given here that contradicts the manifest is refused (one line); without a manifest (an
        answer set made by the official scripts) the given values or the domain's defaults are used.
        """
        if manifest is None:
            return self
        taken = {"steps": "steps", "guidance": "guidance_scale", "size": "size", "photo_phrase": "photo_phrase",
                 "ext": "ext"}
        updates = {}
        for field, key in taken.items():
            have, given = manifest.get(key), getattr(self, field)
            if given is not None and have is not None and given != have:
                raise UsageError(f"--{field.replace('_', '-')} {given} contradicts the answer set's {key} {have} "
                                 f"(answer_set.json); drop it, the manifest's value is used")
            updates[field] = have if given is None else given
        for field in ("seeds", "themes", "objects"):  # a subset of what the folder holds may be scored
            have, given = manifest.get(field), getattr(self, field)
            given = [given] if isinstance(given, (str, int)) else given
            if given is None:
                updates[field] = have
            elif have is not None and any(g not in have for g in given):
                extra = next(g for g in given if g not in have)
                raise UsageError(f"--{field} {extra} is not in the answer set (answer_set.json has "
                                 f"{', '.join(map(str, have))})")
        return dataclasses.replace(self, **updates)

    @property
    def spec(self) -> Domain:
        try:
            return DOMAINS[self.domain]
        except KeyError:
            raise UsageError(f"unknown domain {self.domain!r}; known: {', '.join(sorted(DOMAINS))}") from None

    def attack_config(self) -> AttackConfig | None:
        """The attack's settings: the domain's defaults, the ``attack_*`` fields over them, judged with the
        answer set's sampler (steps and guidance must be resolved); None without ``attack``."""
        if self.attack is None:
            return None
        base = ATTACK_DEFAULTS[self.spec.name]
        given = {"tokens": self.attack_tokens, "insertion": self.attack_insertion, "timesteps": self.attack_timesteps,
                 "steps_per_timestep": self.attack_steps}
        return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None},
                                   judge_steps=self.steps, judge_guidance=self.guidance)

    def resolved(self, concept: str | None = None) -> "EvalConfig":
        """A copy with every default filled in and every field checked; ``concept``: the artifact's."""
        domain = self.spec
        steps, guidance = SAMPLER_DEFAULTS[domain.name]
        targets = [self.targets] if isinstance(self.targets, str) else self.targets
        seeds = [self.seeds] if isinstance(self.seeds, int) else self.seeds
        seeds = [int(s) for s in (seeds if seeds else domain.seeds)]
        themes = _subset(domain, "theme", domain.themes, self.themes)
        objects = _subset(domain, "object", domain.objects, self.objects)
        cfg = dataclasses.replace(
            self, steps=self.steps if self.steps is not None else steps,
            guidance=float(self.guidance if self.guidance is not None else guidance), seeds=seeds,
            themes=themes, objects=objects,
            photo_phrase=self.photo_phrase if self.photo_phrase is not None else "Photo",
            ext=self.ext or ("png" if domain.name == "minicanvas" else "jpg"),
            targets=resolve_targets(domain, targets or ([concept] if concept else ["all"]), themes + objects),
            grid_seed=self.grid_seed if self.grid_seed is not None else seeds[0])
        if cfg.steps < 1 or len(set(seeds)) != len(seeds):
            raise UsageError("--steps must be positive and --seeds distinct")
        if cfg.batch_size is not None and not 1 <= cfg.batch_size <= MAX_BATCH:
            raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH}, got {cfg.batch_size}")
        bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
        if bad:
            raise UsageError(f"--seeds must be between 0 and {MAX_SEED}, got {bad[0]}")
        if cfg.size is not None and not (8 <= cfg.size <= MAX_SIZE and cfg.size % 8 == 0):
            raise UsageError(f"--size must be a multiple of 8 between 8 and {MAX_SIZE} (the VAE halves it three "
                             f"times), got {cfg.size}")
        if cfg.ext not in EXTENSIONS:
            raise UsageError(f"ext must be one of {', '.join(EXTENSIONS)}, got {cfg.ext!r}")
        if cfg.grid_seed not in seeds:
            raise UsageError(f"--grid-seed {cfg.grid_seed} is not one of --seeds")
        for target in cfg.targets:  # a target's UA, IRA and CRA need it, another of its kind and the other axis
            kind = domain.concept_kind(target)
            own, other = (cfg.themes, cfg.objects) if kind == "style" else (cfg.objects, cfg.themes)
            peers = [c for c in own if c != target and c != domain.photo_theme]
            if target not in own or not peers or not [c for c in other if c != domain.photo_theme]:
                raise UsageError(f"the subset must hold the target {target}, another {kind} and at least one "
                                 f"{'object' if kind == 'style' else 'theme'} (--themes/--objects)")
        if cfg.attack is not None:
            if cfg.attack not in KINDS:
                raise UsageError(f"unknown attack {cfg.attack!r}; known: {', '.join(KINDS)}")
            if not targets and not concept:
                raise UsageError("--attack needs a target: --target NAME, or an --artifact whose concept it is")
            if cfg.attack_prompts is not None and cfg.attack_prompts < 1:
                raise UsageError(f"--attack-prompts must be at least 1, got {cfg.attack_prompts}")
            cfg.attack_config().check()  # an AttackError (a ValueError): one line
        elif any(v is not None for v in (cfg.attack_tokens, cfg.attack_insertion, cfg.attack_timesteps,
                                         cfg.attack_steps, cfg.attack_prompts)):
            raise UsageError("--attack-* options need --attack unlearndiffatk (or soft)")
        if cfg.out is not None:
            cfg.out = Path(cfg.out)
            if cfg.out.exists() and not cfg.out.is_dir():
                raise UsageError(f"--out {cfg.out} is a file, expected a folder")
        if cfg.answer_dir is None:
            if cfg.out is None:
                raise UsageError("give an output folder or an answer-set folder")
            cfg.answer_dir = cfg.out / "answer_set"
        cfg.answer_dir = Path(cfg.answer_dir)
        return cfg


def _subset(domain: Domain, kind: str, every: Sequence[str], names: Sequence[str] | str | None) -> list[str]:
    """Canonical names of a --themes/--objects subset in label order (None: all of them)."""
    if names is None:
        return list(every)
    names = [names] if isinstance(names, str) else names
    wanted = set()
    for name in names:
        canonical = domain.canonical(name)  # ConceptError (a ValueError) lists the known concepts
        if canonical not in every:
            raise UsageError(f"{name!r} is not a {kind} of {domain.name}")
        wanted.add(canonical)
    return [c for c in every if c in wanted]


def resolve_targets(domain: Domain, names: Sequence[str], within: Sequence[str] | None = None) -> list[str]:
    """Canonical target names in the given order, 'all' expanded to every style then every object
    (of ``within``, a subset's themes and objects, when given)."""
    out: list[str] = []
    for name in names:
        if name.lower() == "all":
            out += [c for c in domain.styles + domain.objects if c not in out and (within is None or c in within)]
            continue
        domain.concept_kind(name)  # raises ConceptError (a ValueError) with the list of known concepts
        if domain.canonical(name) not in out:
            out.append(domain.canonical(name))
    return out
