"""Method options and presets: coercion, ranges, precedence, and every shipped preset loads and fits."""

import dataclasses

import pytest

from erase.methods import METHODS
from erase.methods.config import MethodConfigError, build_config, load_preset
from erase.methods.esd import ESDConfig


def test_key_value_strings_become_the_field_types_and_bad_ones_are_refused():
    cfg = build_config(ESDConfig, {"lr": "3e-4", "steps": "7", "faithful_offset": "yes", "prompts": "a, b"})
    assert (cfg.lr, cfg.steps, cfg.faithful_offset, cfg.prompts) == (3e-4, 7, True, ["a", "b"])
    for layer, message in (({"lr": "fast"}, "expects float"), ({"nope": 1}, "unknown option 'nope'"),
                           ({"lr": "inf"}, "finite"), ({"faithful_offset": "maybe"}, "true or false")):
        with pytest.raises(MethodConfigError, match=message):
            build_config(ESDConfig, layer)
    assert build_config(ESDConfig, {"lr": 1}, {"lr": 2e-4}).lr == 2e-4  # later layers win


@pytest.mark.parametrize("method,world", [("esd", "minicanvas"), ("salun", "minicanvas"),
                                          ("feature-unlearning", "digits"), ("feature-unlearning", "minicanvas")])
def test_every_shipped_preset_loads_fits_its_config_and_gives_a_reason_per_key(method, world):
    cls = METHODS[method]
    preset = load_preset(method, world, cls.concept_kinds())
    assert preset is not None and set(preset.by_kind) == set(cls.concept_kinds())
    for kind, values in preset.by_kind.items():
        cfg = build_config(cls.Config, values)  # unknown keys or wrong types would raise here
        assert all(getattr(cfg, k) == v for k, v in values.items())
        unexplained = [k for k in values if k not in preset.reasons and f"{kind}.{k}" not in preset.reasons]
        assert not unexplained, f"{preset.name}: no reason recorded for {unexplained}"
    assert load_preset(method, "unlearncanvas", cls.concept_kinds()) is None  # the real world uses paper defaults


def test_presets_inherit_and_kinds_override_common(tmp_path):
    (tmp_path / "m.base.toml").write_text('[common]\nsteps = 5\nlr = 0.1\n[reasons]\nsteps = "measured"\n')
    (tmp_path / "m.child.toml").write_text('extends = "m.base"\n[style]\nlr = 0.2\n[reasons]\nlr = "also"\n')
    preset = load_preset("m", "child", folder=tmp_path)
    assert preset.overrides("style") == {"steps": 5, "lr": 0.2} and preset.overrides("object") == {"steps": 5,
                                                                                                   "lr": 0.1}
    assert preset.reasons == {"steps": "measured", "lr": "also"}
    (tmp_path / "m.loop.toml").write_text('extends = "m.loop"\n')
    with pytest.raises(MethodConfigError, match="extends itself"):
        load_preset("m", "loop", folder=tmp_path)
    (tmp_path / "m.bad.toml").write_text('[colour]\nlr = 1\n')
    with pytest.raises(MethodConfigError, match=r"unknown table \[colour\]"):
        load_preset("m", "bad", folder=tmp_path)


def test_config_fields_cite_their_source():
    for cls in METHODS.values():
        missing = [f.name for f in dataclasses.fields(cls.Config) if not f.metadata.get("help")]
        assert not missing, f"{cls.name}: options without help text: {missing}"
