"""Method options: config dataclasses with cited defaults, ``key=value`` coercion, and presets as TOML data.

Precedence, later wins: the Config class defaults (the paper's, each with its source), the
world's preset file (``presets/<method>.<world>.toml``, only when the base model belongs to that
world), a ``--config`` file, ``--steps``, then ``key=value`` arguments.

A preset file holds a ``[common]`` table, one table per concept kind (``[style]``, ``[object]``)
that overrides it, an optional ``extends = "<other preset file stem>"`` to inherit from, and a
``[reasons]`` table that says, for a key (``steps``) or a kind's key (``object.prompts``), which
measurement chose the value. ``erase-concept --help`` prints both.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"


class MethodConfigError(ValueError):
    """A method option that is unknown or has a value of the wrong type or range; the message is one line."""


def option(default: Any, help: str, source: str = "") -> Any:
    """A config field whose help text and provenance show up in ``erase-concept --help``."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, "source": source}}
    if isinstance(default, (list, dict, set)):
        kwargs["default_factory"] = lambda: type(default)(default)
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Turn a TOML value or a ``key=value`` string into the type of the field's default."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise MethodConfigError(f"option {name} expects true or false, got {value!r}")
        if kind in (list, tuple):
            return [p.strip() for p in text.split(",") if p.strip()] if text else []
        try:
            value = kind(text) if default is not None else text
        except ValueError:
            raise MethodConfigError(f"option {name} expects {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and kind in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value)
    if default is not None and not isinstance(value, kind):
        raise MethodConfigError(f"option {name} expects {kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MethodConfigError(f"option {name} must be a finite number, got {value!r}")
    return value


def build_config(config_cls: type, *layers: dict[str, Any]) -> Any:
    """A config from the class defaults with each layer of overrides applied in turn (later wins)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    defaults = config_cls()
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise MethodConfigError(f"unknown option {key!r} for {config_cls.__name__}; "
                                        f"known: {', '.join(sorted(fields))}")
            values[key] = _coerce(key, value, getattr(defaults, key))
    return config_cls(**values)


def describe_config(config_cls: type) -> list[str]:
    """One help line per option: name, default, meaning and source."""
    defaults = config_cls()
    lines = []
    for f in dataclasses.fields(config_cls):
        value = getattr(defaults, f.name)
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        src = f" [{f.metadata['source']}]" if f.metadata.get("source") else ""
        lines.append(f"    {f.name}={shown}  {f.metadata.get('help', '')}{src}")
    return lines


@dataclass
class Preset:
    """A world's preset of one method: overrides per concept kind and the reason for each value."""

    name: str  # file stem, e.g. "esd.minicanvas"
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def overrides(self, kind: str) -> dict[str, Any]:
        return dict(self.by_kind.get(kind, {}))

    def describe(self) -> list[str]:
        lines = [f"    preset {self.name} ({kind}): " + ", ".join(f"{k}={v}" for k, v in values.items())
                 for kind, values in self.by_kind.items()]
        return lines + [f"      why {key}: {reason}" for key, reason in self.reasons.items()]


def load_preset(method: str, world: str, kinds: tuple[str, ...] = ("style", "object"),
                folder: Path = PRESET_DIR) -> Preset | None:
    """The preset of ``method`` for ``world``, or None when the method has none for it."""
    return _load_preset_file(f"{method}.{world}", kinds, folder, seen=())


def _load_preset_file(stem: str, kinds: tuple[str, ...], folder: Path, seen: tuple[str, ...]) -> Preset | None:
    path = folder / f"{stem}.toml"
    if not path.is_file():
        if seen:
            raise MethodConfigError(f"preset {seen[-1]} extends {stem!r}, which does not exist in {folder}")
        return None
    if stem in seen:
        raise MethodConfigError(f"preset {stem} extends itself ({' -> '.join(seen + (stem,))})")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise MethodConfigError(f"cannot read preset {path}: {err}") from None
    parent = _load_preset_file(data.pop("extends"), kinds, folder, seen + (stem,)) if "extends" in data else None
    reasons = dict(parent.reasons) if parent else {}
    reasons.update({str(k): str(v) for k, v in data.pop("reasons", {}).items()})
    common = data.pop("common", {})
    unknown = [k for k in data if k not in kinds]
    if unknown:
        raise MethodConfigError(f"preset {path}: unknown table [{unknown[0]}]; known: common, reasons, "
                                f"{', '.join(kinds)}")
    by_kind = {}
    for kind in kinds:
        merged = {**(parent.by_kind.get(kind, {}) if parent else {}), **common, **data.get(kind, {})}
        if merged:
            by_kind[kind] = merged
    return Preset(stem, by_kind, reasons)
