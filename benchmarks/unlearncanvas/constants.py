"""UnlearnCanvas names, label order, prompt template and evaluation seeds.

Facts from the official repository (`machine_unlearning/evaluation/constants/const.py`,
`sample_compvis_automated.py`, `accuracy.py`); see ``../shared/reference/unlearncanvas.md``.
A ``Domain`` bundles them so that the evaluation code runs unchanged on MiniCanvas, whose
domain is defined in ``minicanvas.py`` with the same shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Style-classifier label order: 50 styles + the photo domain, alphabetical (index 38 = Seed_Images).
THEMES: tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon", "Cold_Warm",
    "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple", "Defoliation", "Early_Autumn",
    "Expressionism", "Fauvism", "French", "Glowing_Sunset", "Gorgeous_Love", "Greenfield", "Impressionism",
    "Ink_Art", "Joy", "Liquid_Dreams", "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic",
    "Neon_Lines", "On_Fire", "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust",
    "Seed_Images", "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)
PHOTO_THEME = "Seed_Images"
STYLES: tuple[str, ...] = tuple(t for t in THEMES if t != PHOTO_THEME)
# Object-classifier label order (alphabetical).
OBJECTS: tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers", "Frogs",
    "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers", "Trees", "Waterfalls",
)
# The five evaluation seeds of the released samplers and accuracy.py.
SEEDS: tuple[int, ...] = (188, 288, 588, 688, 888)
# The CompVis fine-tuning caption and the template of 8 of the 9 released unlearned-model samplers.
PROMPT_TEMPLATE = "A {object} image in {style} style."
# Reference-sampler settings: DDIM, eta 0, 100 steps, CFG 9.0.
SAMPLER_STEPS = 100
GUIDANCE_SCALE = 9.0

_ANSWER_NAME = re.compile(r"^(?P<theme>.+)_(?P<object>[^_]+)_seed(?P<seed>\d+)\.(?P<ext>[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class Domain:
    """A style x object world: classifier label orders, the photo theme and the prompt template."""

    name: str
    themes: tuple[str, ...]
    objects: tuple[str, ...]
    photo_theme: str
    seeds: tuple[int, ...] = SEEDS

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(t for t in self.themes if t != self.photo_theme)

    def prompt(self, theme: str, obj: str, photo_phrase: str = "Photo") -> str:
        """``A {object} image in {style} style.``; the photo theme reads ``photo_phrase``.

        The released unlearned-model samplers wrote "Seed Images" for the photo theme; pass
        ``photo_phrase="Seed Images"`` to reproduce them.
        """
        style = photo_phrase if theme == self.photo_theme else theme.replace("_", " ")
        return PROMPT_TEMPLATE.format(object=obj, style=style)

    def concept_kind(self, concept: str) -> str:
        """'style' or 'object' for a concept name of this domain (underscores or spaces)."""
        key = concept.strip().replace(" ", "_").lower()
        if key in {s.lower() for s in self.styles}:
            return "style"
        if key in {o.lower() for o in self.objects}:
            return "object"
        raise ValueError(f"{concept!r} is not a style or object of {self.name} "
                         f"(styles: {', '.join(self.styles)}; objects: {', '.join(self.objects)})")

    def canonical(self, concept: str) -> str:
        """The domain's own spelling of a concept name given with spaces or another case."""
        key = concept.strip().replace(" ", "_").lower()
        for name in self.themes + self.objects:
            if name.lower() == key:
                return name
        raise ValueError(f"{concept!r} is not a concept of {self.name}")


UNLEARNCANVAS = Domain("unlearncanvas", THEMES, OBJECTS, PHOTO_THEME)


def answer_file_name(theme: str, obj: str, seed: int, ext: str = "jpg") -> str:
    """The official flat answer-set name, e.g. ``Crayon_Dogs_seed188.jpg``."""
    return f"{theme}_{obj}_seed{seed}.{ext}"


def parse_answer_file_name(name: str) -> tuple[str, str, int]:
    """(theme, object, seed) from an answer-set file name; object names hold no underscore."""
    match = _ANSWER_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not an answer-set file name (<Theme>_<Object>_seed<N>.<ext>)")
    return match["theme"], match["object"], int(match["seed"])
