"""What a concept name means: the MiniCanvas and UnlearnCanvas vocabularies, concept resolution, prompts.

Every method and the benchmark read concepts from here, so "Candy" or "Van Gogh" means the same
thing to ``erase-concept`` and to ``unlearncanvas-eval``. Facts about UnlearnCanvas (label order,
photo theme, template, seeds) come from the official repository
(``machine_unlearning/evaluation/constants/const.py``, ``sample_compvis_automated.py``,
``accuracy.py``); see ``../shared/reference/unlearncanvas.md``. MiniCanvas, the embedded world, has
the same shape at toy size; its pictures are drawn by ``erase.data.minicanvas``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# Style-classifier label order: 50 styles + the photo domain, alphabetical (index 38 = Seed_Images).
UNLEARNCANVAS_THEMES: tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon", "Cold_Warm",
    "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple", "Defoliation", "Early_Autumn",
    "Expressionism", "Fauvism", "French", "Glowing_Sunset", "Gorgeous_Love", "Greenfield", "Impressionism",
    "Ink_Art", "Joy", "Liquid_Dreams", "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic",
    "Neon_Lines", "On_Fire", "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust",
    "Seed_Images", "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)
# Object-classifier label order (alphabetical).
UNLEARNCANVAS_OBJECTS: tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers", "Frogs",
    "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers", "Trees", "Waterfalls",
)
# MiniCanvas: 10 styles + the photo theme (plays Seed_Images), 10 objects; label order alphabetical.
MINICANVAS_STYLES: tuple[str, ...] = (
    "Candy", "Fire", "Forest", "Mosaic", "Neon", "Pop", "Sketch", "Sunset", "Watercolor", "Winter",
)
MINICANVAS_THEMES: tuple[str, ...] = tuple(sorted(MINICANVAS_STYLES + ("Photo",)))
MINICANVAS_OBJECTS: tuple[str, ...] = (
    "Arrow", "Boat", "Fish", "Flower", "Heart", "House", "Moon", "Mushroom", "Star", "Tree",
)
# The five evaluation seeds of the released samplers and accuracy.py.
SEEDS: tuple[int, ...] = (188, 288, 588, 688, 888)
# The CompVis fine-tuning caption and the template of 8 of the 9 released unlearned-model samplers.
PROMPT_TEMPLATE = "A {object} image in {style} style."
KINDS = ("style", "object")


class ConceptError(ValueError):
    """A concept name that cannot be resolved, or a template that needs a domain; one line."""


@dataclass(frozen=True)
class Domain:
    """A style x object world: classifier label orders, the photo theme, the prompt template, seeds."""

    name: str
    themes: tuple[str, ...]
    objects: tuple[str, ...]
    photo_theme: str
    seeds: tuple[int, ...] = SEEDS

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(t for t in self.themes if t != self.photo_theme)

    def phrase(self, theme_or_object: str, photo_phrase: str = "Photo") -> str:
        """How a concept is written in a prompt: underscores become spaces, the photo theme reads ``photo_phrase``."""
        return photo_phrase if theme_or_object == self.photo_theme else theme_or_object.replace("_", " ")

    def prompt(self, theme: str, obj: str, photo_phrase: str = "Photo") -> str:
        """``A {object} image in {style} style.``; the photo theme reads ``photo_phrase``.

        The released unlearned-model samplers wrote "Seed Images" for the photo theme; pass
        ``photo_phrase="Seed Images"`` to reproduce them.
        """
        return PROMPT_TEMPLATE.format(object=obj, style=self.phrase(theme, photo_phrase))

    def grid_prompts(self, photo_phrase: str = "Photo") -> list[str]:
        """Every (theme, object) prompt in row-major order, themes in label order."""
        return [self.prompt(t, o, photo_phrase) for t in self.themes for o in self.objects]

    def concept_kind(self, concept: str) -> str:
        """'style' or 'object' for a concept name of this domain (underscores or spaces)."""
        key = concept.strip().replace(" ", "_").lower()
        if key in {s.lower() for s in self.styles}:
            return "style"
        if key in {o.lower() for o in self.objects}:
            return "object"
        raise ConceptError(f"{concept!r} is not a style or object of {self.name} "
                           f"(styles: {', '.join(self.styles)}; objects: {', '.join(self.objects)})")

    def canonical(self, concept: str) -> str:
        """The domain's own spelling of a concept name given with spaces or another case."""
        key = concept.strip().replace(" ", "_").lower()
        for name in self.themes + self.objects:
            if name.lower() == key:
                return name
        raise ConceptError(f"{concept!r} is not a concept of {self.name}")


UNLEARNCANVAS = Domain("unlearncanvas", UNLEARNCANVAS_THEMES, UNLEARNCANVAS_OBJECTS, "Seed_Images")
MINICANVAS = Domain("minicanvas", MINICANVAS_THEMES, MINICANVAS_OBJECTS, "Photo")
DOMAINS: dict[str, Domain] = {MINICANVAS.name: MINICANVAS, UNLEARNCANVAS.name: UNLEARNCANVAS}


def find_domain(concept: str) -> Domain | None:
    """The benchmark domain (MiniCanvas first, then UnlearnCanvas) that names ``concept``, or None."""
    for domain in DOMAINS.values():
        try:
            domain.canonical(concept)
            return domain
        except ConceptError:
            continue
    return None


@dataclass(frozen=True)
class Concept:
    """A resolved concept: the user's text, its canonical name, kind, phrase in prompts and domain."""

    text: str
    name: str
    kind: str
    phrase: str
    domain: Domain | None

    def others(self) -> list[str]:
        """Phrases of the domain's other concepts of the same kind (candidate remap targets)."""
        if self.domain is None:
            raise ConceptError(f"{self.text!r} is not a concept of a benchmark domain; name the alternatives")
        names = self.domain.styles if self.kind == "style" else self.domain.objects
        return [self.domain.phrase(n) for n in names if n != self.name]

    def expand(self, templates: Sequence[str]) -> list[str]:
        """Fill ``{concept}`` and expand ``{object}`` / ``{style}`` over the concept's domain.

        ``"A {object} image in {concept} style."`` becomes one prompt per object of the domain, which is
        how the embedded presets condition on the captions the base model was trained with.
        """
        out: list[str] = []
        for template in templates:
            if "{object}" in template or "{style}" in template:
                if self.domain is None:
                    raise ConceptError(f"prompt template {template!r} needs a concept of a benchmark domain "
                                       f"(MiniCanvas or UnlearnCanvas); {self.text!r} is not one")
                if "{object}" in template:
                    out += [template.format(concept=self.phrase, object=o) for o in self.domain.objects]
                else:
                    out += [template.format(concept=self.phrase, style=self.domain.phrase(s))
                            for s in self.domain.themes]
            else:
                out.append(template.format(concept=self.phrase))
        if not out:
            raise ConceptError("no prompts: give at least one prompt template")
        return out


def resolve_concept(text: str, kind: str | None = None) -> Concept:
    """Resolve a user's concept text; ``kind`` defaults to the domain's, else ``object``."""
    text = (text or "").strip()
    if not text:
        raise ConceptError("the concept is empty; give --concept TEXT")
    if kind is not None and kind not in KINDS:
        raise ConceptError(f"kind must be style or object, got {kind!r}")
    domain = find_domain(text)
    if domain is None:
        return Concept(text, text, kind or "object", text, None)
    name = domain.canonical(text)
    found = "style" if name in domain.themes else "object"
    return Concept(text, name, kind or found, domain.phrase(name), domain)


def expand_prompts(templates: Sequence[str], concept: str) -> list[str]:
    """``resolve_concept(concept).expand(templates)``: the prompt grid of a concept."""
    return resolve_concept(concept).expand(templates)
