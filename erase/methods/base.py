"""The method contract: a config dataclass with cited defaults, trainable parameters, a loss per step.

Everything else (optimizer stepping, precision, devices, checkpoints, timing, saving) belongs to
``erase.trainer`` and ``erase.artifacts``, so that a new method is one file and one registry entry.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn


class MethodConfigError(ValueError):
    """A method option that is unknown or has a value of the wrong type; the message is one line."""


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
            return kind(text) if default is not None else text
        except ValueError:
            raise MethodConfigError(f"option {name} expects {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and kind in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value)
    if default is not None and not isinstance(value, kind):
        raise MethodConfigError(f"option {name} expects {kind.__name__}, got {value!r}")
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


class Method(ABC):
    """Base class. Subclasses set ``name``, ``Config``, ``embedded_preset`` and implement the duties.

    ``model`` is whatever the method works on (a ``StableDiffusionPipeline`` for the diffusion
    methods, a generator for the GAN/VAE ones); the trainer never looks inside it.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    # Overrides applied when the base model is the embedded one, keyed by concept kind.
    embedded_preset: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any, concept: str, kind: str, model: Any, device: torch.device | str = "cpu"):
        self.config = config
        self.concept = concept
        self.kind = kind
        self.model = model
        self.device = torch.device(device)

    # ---- the duties (setup may stay empty) ------------------------------------------------
    def setup(self, generator: torch.Generator) -> None:
        """One-off preparation (frozen copies, data, masks) before the first step."""

    @abstractmethod
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Named parameters (``component.param_name``) the optimizer moves."""

    @abstractmethod
    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of one (micro-)step; all randomness must come from ``generator``."""

    @abstractmethod
    def changed_components(self) -> dict[str, nn.Module]:
        """The components the artifact must store, by pipeline attribute name."""

    # ---- optional hooks ---------------------------------------------------------------
    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam at ``config.lr`` unless a method needs otherwise (both ESD and SalUn use plain Adam)."""
        return torch.optim.Adam(params, lr=self.config.lr)

    def after_backward(self) -> None:
        """Called once gradients are complete, before the optimizer step (e.g. SalUn's mask)."""

    def extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Extra safetensors files for the artifact, file stem -> tensors (e.g. a saliency mask)."""
        return {}

    def num_steps(self) -> int:
        return int(self.config.steps)

    def run_info(self) -> dict[str, Any]:
        """Facts decided during the run (e.g. a drawn remap target), recorded as ``erase.json``'s ``run``."""
        return {}


def named_trainable(component: str, module: nn.Module, keep) -> dict[str, nn.Parameter]:
    """``component.name`` -> parameter for every parameter whose name passes ``keep``; others frozen."""
    out = {}
    for name, param in module.named_parameters():
        selected = bool(keep(name))
        param.requires_grad_(selected)
        if selected:
            out[f"{component}.{name}"] = param
    return out


def find_domain(concept: str):
    """The benchmark domain (MiniCanvas first, then UnlearnCanvas) that names ``concept``, or None."""
    from benchmarks.unlearncanvas.constants import UNLEARNCANVAS
    from benchmarks.unlearncanvas.minicanvas import DOMAIN as MINICANVAS

    for domain in (MINICANVAS, UNLEARNCANVAS):
        try:
            domain.canonical(concept)
            return domain
        except ValueError:
            continue
    return None


def expand_prompts(templates: list[str], concept: str) -> list[str]:
    """Fill ``{concept}`` and expand ``{object}`` / ``{style}`` over the concept's benchmark domain.

    ``"A {object} image in {concept} style."`` becomes one prompt per object of the domain, which is
    how the embedded presets condition on the captions the base model was trained with.
    """
    domain = find_domain(concept)
    text = domain.canonical(concept).replace("_", " ") if domain else concept.strip()
    if domain is not None and domain.canonical(concept) == domain.photo_theme:
        text = "Photo"
    out: list[str] = []
    for template in templates:
        if "{object}" in template or "{style}" in template:
            if domain is None:
                raise MethodConfigError(f"prompt template {template!r} needs a concept of a benchmark domain "
                                        f"(MiniCanvas or UnlearnCanvas); {concept!r} is not one")
            if "{object}" in template:
                out += [template.format(concept=text, object=o) for o in domain.objects]
            else:
                out += [template.format(concept=text, style="Photo" if s == domain.photo_theme else s.replace("_", " "))
                        for s in domain.themes]
        else:
            out.append(template.format(concept=text))
    if not out:
        raise MethodConfigError("no prompts: give at least one prompt template")
    return out
