import pytest

from benchmarks.unlearncanvas.protocol import (
    GUIDANCE_SCALE, SAMPLER_DEFAULTS, SAMPLER_STEPS, answer_file_name, parse_answer_file_name)


def test_reference_sampler_settings():
    assert (SAMPLER_STEPS, GUIDANCE_SCALE) == (100, 9.0)
    assert SAMPLER_DEFAULTS["unlearncanvas"] == (100, 9.0) and set(SAMPLER_DEFAULTS) == {"unlearncanvas", "minicanvas"}


@pytest.mark.parametrize("theme,obj,seed", [("Crayon", "Dogs", 188), ("Van_Gogh", "Architectures", 888),
                                            ("Seed_Images", "Sea", 5)])
def test_answer_file_names_round_trip(theme, obj, seed):
    name = answer_file_name(theme, obj, seed)
    assert parse_answer_file_name(name) == (theme, obj, seed)
    assert answer_file_name("Crayon", "Dogs", 188) == "Crayon_Dogs_seed188.jpg"


def test_bad_answer_file_name():
    with pytest.raises(ValueError, match="not an answer-set file name"):
        parse_answer_file_name("Crayon-Dogs.jpg")
