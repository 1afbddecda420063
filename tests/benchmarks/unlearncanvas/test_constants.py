import pytest

from benchmarks.unlearncanvas import constants as uc
from benchmarks.unlearncanvas import minicanvas


def test_label_orders_match_the_released_classifiers():
    assert len(uc.THEMES) == 51 and uc.THEMES.index("Seed_Images") == 38
    assert list(uc.THEMES) == sorted(uc.THEMES)
    assert len(uc.STYLES) == 50 and "Seed_Images" not in uc.STYLES
    assert len(uc.OBJECTS) == 20 and uc.OBJECTS[0] == "Architectures" and uc.OBJECTS[-1] == "Waterfalls"
    assert uc.SEEDS == (188, 288, 588, 688, 888)


def test_prompt_template_and_photo_domain():
    d = uc.UNLEARNCANVAS
    assert d.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    assert d.prompt("Seed_Images", "Cats") == "A Cats image in Photo style."
    assert d.prompt("Seed_Images", "Cats", photo_phrase="Seed Images") == "A Cats image in Seed Images style."
    assert minicanvas.DOMAIN.prompt("Photo", "Fish") == "A Fish image in Photo style."


def test_concept_kinds_and_spelling():
    d = uc.UNLEARNCANVAS
    assert d.concept_kind("van gogh") == "style" and d.canonical("van gogh") == "Van_Gogh"
    assert d.concept_kind("Dogs") == "object"
    with pytest.raises(ValueError, match="not a style or object"):
        d.concept_kind("Seed_Images")
    assert minicanvas.DOMAIN.styles == tuple(t for t in minicanvas.THEMES if t != "Photo")


@pytest.mark.parametrize("theme,obj,seed", [("Crayon", "Dogs", 188), ("Van_Gogh", "Architectures", 888),
                                            ("Seed_Images", "Sea", 5)])
def test_answer_file_names_round_trip(theme, obj, seed):
    name = uc.answer_file_name(theme, obj, seed)
    assert uc.parse_answer_file_name(name) == (theme, obj, seed)
    assert uc.answer_file_name("Crayon", "Dogs", 188) == "Crayon_Dogs_seed188.jpg"


def test_bad_answer_file_name():
    with pytest.raises(ValueError, match="not an answer-set file name"):
        uc.parse_answer_file_name("Crayon-Dogs.jpg")
