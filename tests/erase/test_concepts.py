"""Concept names: the two vocabularies, spelling, kinds, prompt templates, resolution for methods."""

import pytest

from erase.concepts import (MINICANVAS, SEEDS, UNLEARNCANVAS, ConceptError, expand_prompts, find_domain,
                            resolve_concept)


def test_label_orders_match_the_released_classifiers():
    themes = UNLEARNCANVAS.themes
    assert len(themes) == 51 and themes.index("Seed_Images") == 38 and list(themes) == sorted(themes)
    assert len(UNLEARNCANVAS.styles) == 50 and "Seed_Images" not in UNLEARNCANVAS.styles
    objects = UNLEARNCANVAS.objects
    assert len(objects) == 20 and objects[0] == "Architectures" and objects[-1] == "Waterfalls"
    assert SEEDS == (188, 288, 588, 688, 888)
    assert MINICANVAS.styles == tuple(t for t in MINICANVAS.themes if t != "Photo") and len(MINICANVAS.themes) == 11


def test_prompt_template_and_photo_domain():
    d = UNLEARNCANVAS
    assert d.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    assert d.prompt("Seed_Images", "Cats") == "A Cats image in Photo style."
    assert d.prompt("Seed_Images", "Cats", photo_phrase="Seed Images") == "A Cats image in Seed Images style."
    assert MINICANVAS.prompt("Photo", "Fish") == "A Fish image in Photo style."
    grid = MINICANVAS.grid_prompts()
    assert len(grid) == 110 and grid[0] == "A Arrow image in Candy style." and grid[10] == "A Arrow image in Fire style."


def test_concept_kinds_and_spelling():
    d = UNLEARNCANVAS
    assert d.concept_kind("van gogh") == "style" and d.canonical("van gogh") == "Van_Gogh"
    assert d.concept_kind("Dogs") == "object"
    with pytest.raises(ConceptError, match="not a style or object"):
        d.concept_kind("Seed_Images")
    assert find_domain("candy") is MINICANVAS and find_domain("Van Gogh") is UNLEARNCANVAS
    assert find_domain("a red car") is None


def test_resolution_gives_name_kind_phrase_and_the_alternatives():
    c = resolve_concept(" van gogh ")
    assert (c.text, c.name, c.kind, c.phrase, c.domain) == ("van gogh", "Van_Gogh", "style", "Van Gogh", UNLEARNCANVAS)
    fish = resolve_concept("Fish")
    assert fish.kind == "object" and "Fish" not in fish.others() and len(fish.others()) == 9
    assert resolve_concept("Fish", "style").kind == "style"  # an explicit kind wins
    free = resolve_concept("a red car")
    assert (free.kind, free.domain, free.phrase) == ("object", None, "a red car")
    with pytest.raises(ConceptError, match="name the alternatives"):
        free.others()
    for bad, message in (("   ", "empty"), ("Candy", "kind must be")):
        with pytest.raises(ConceptError, match=message):
            resolve_concept(bad, "colour" if bad == "Candy" else None)


def test_prompt_templates_expand_over_the_domain():
    assert expand_prompts(["A {object} image in {concept} style."], "candy")[:2] == \
        ["A Arrow image in Candy style.", "A Boat image in Candy style."]
    assert len(expand_prompts(["A {concept} image in {style} style."], "Fish")) == 11
    assert "A Fish image in Photo style." in expand_prompts(["A {concept} image in {style} style."], "Fish")
    assert expand_prompts(["{concept}"], "Van Gogh") == ["Van Gogh"]
    with pytest.raises(ConceptError, match="needs a concept of a benchmark domain"):
        expand_prompts(["{object} of {concept}"], "a red car")
    with pytest.raises(ConceptError, match="no prompts"):
        expand_prompts([], "Candy")
