"""The UnlearnCanvas evaluation protocol's fixed settings: sampler defaults and answer-set file names.

Facts from the official repository (``sample_compvis_automated.py``, ``accuracy.py``); see
``../shared/reference/unlearncanvas.md``. The vocabularies and seeds live in ``erase.concepts``.
"""

from __future__ import annotations

import re

from erase.attacks.unlearndiffatk import AttackConfig

# Reference-sampler settings: DDIM, eta 0, 100 steps, CFG 9.0.
SAMPLER_STEPS = 100
GUIDANCE_SCALE = 9.0
# Per-domain sampler defaults: the protocol's for real models; for the embedded model settings
# that keep the whole evaluation within minutes on 2 CPU cores (recorded in every results.json).
SAMPLER_DEFAULTS: dict[str, tuple[int, float]] = {
    "unlearncanvas": (SAMPLER_STEPS, GUIDANCE_SCALE),
    "minicanvas": (25, 5.0),
}

# The attack of ``--attack`` per domain (judged with the domain's sampler settings above). UnlearnCanvas:
# the reference's configs/style and configs/object (k = 3 tokens prepended, 50 timesteps x 40 Adam steps).
# MiniCanvas: sized for one target's 50 prompts in a few minutes on 2 CPU cores (10 x 30 steps), with the
# tokens where the target's word is: the embedded text encoder, trained on one caption template, reads a
# style only at its template position (the style's own word prepended recovers it in 0-10 % of prompts,
# placed there in 100 %), so a prefix could not succeed whatever the tokens (README "Robustness").
ATTACK_DEFAULTS: dict[str, AttackConfig] = {
    "unlearncanvas": AttackConfig(tokens=3, insertion="prefix", timesteps=50, steps_per_timestep=40),
    "minicanvas": AttackConfig(tokens=3, insertion="concept", timesteps=10, steps_per_timestep=30),
}

_ANSWER_NAME = re.compile(r"^(?P<theme>.+)_(?P<object>[^_]+)_seed(?P<seed>\d+)\.(?P<ext>[A-Za-z0-9]+)$")


def answer_file_name(theme: str, obj: str, seed: int, ext: str = "jpg") -> str:
    """The official flat answer-set name, e.g. ``Crayon_Dogs_seed188.jpg``."""
    return f"{theme}_{obj}_seed{seed}.{ext}"


def parse_answer_file_name(name: str) -> tuple[str, str, int]:
    """(theme, object, seed) from an answer-set file name; object names hold no underscore."""
    match = _ANSWER_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not an answer-set file name (<Theme>_<Object>_seed<N>.<ext>)")
    return match["theme"], match["object"], int(match["seed"])
