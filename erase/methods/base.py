"""The method contract: three kinds of erasure behind one interface.

* ``GradientMethod`` (ESD, SalUn, feature unlearning): names the parameters it trains and computes
  the loss of one step; the trainer does everything else (autocast, backward, the NaN stop,
  gradient reduction across processes, clipping, the optimizer step).
* ``SteppingMethod`` (inner attack loops, several optimizers): implements the whole
  ``training_step`` through a ``StepContext`` (its seeded generator, autocast, a checked
  ``backward`` and the outer optimizer) and exposes the state it carries between steps as
  tensors, which the trainer checkpoints with the weights so that a resumed run stays bit-identical.
* ``ClosedFormMethod`` (UCE-style edits): ``apply`` edits the weights once, with no optimizer;
  ``erase.json`` records that no training happened.

Every method says which components it changed. Shared machinery (optimizers, precision, devices,
checkpoints, timing, saving) lives in ``erase.trainer`` and ``erase.artifacts``, never in a method,
so a new method is one file, one registry line (``erase/methods/__init__.py``) and, for the
embedded world, one preset file (``erase/methods/presets/<name>.minicanvas.toml``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from erase.concepts import Concept
from erase.memory import MemoryProfile
from erase.methods.config import MethodConfigError

if TYPE_CHECKING:  # the trainer imports this module; the context type is only for annotations
    from erase.trainer import StepContext

KINDS = ("gradient", "step", "closed-form")


class Method(ABC):
    """Common part. Subclasses set ``name``, ``Config``, ``summary`` and ``model_type``.

    ``model`` is whatever the method works on: a ``StableDiffusionPipeline`` when ``model_type`` is
    ``"diffusion"``, a ``pipelines.generators.GeneratorArtifact`` when it is ``"generator"``; the
    trainer never looks inside it.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # set by the three base classes below
    model_type: ClassVar[str] = "diffusion"
    artifact_format: ClassVar[str] = "auto"  # what ``--format auto`` stores: auto (partial when small), full

    @classmethod
    def concept_kinds(cls) -> tuple[str, ...]:
        """What a concept can be for this method: a style or object of a diffusion model, a generator feature."""
        return ("feature",) if cls.model_type == "generator" else ("style", "object")

    def __init__(self, config: Any, concept: Concept, model: Any, device: torch.device | str = "cpu"):
        self.config = config
        self.concept = concept
        self.model = model
        self.device = torch.device(device)

    @classmethod
    def validate(cls, config: Any, concept: Concept) -> None:
        """Refuse option values out of range before any model is built (raise ``MethodConfigError``)."""
        for key in ("steps", "batch_size"):
            if hasattr(config, key) and getattr(config, key) < 1:
                raise MethodConfigError(f"option {key} must be at least 1, got {getattr(config, key)}")
        if hasattr(config, "lr") and not config.lr > 0:
            raise MethodConfigError(f"option lr must be positive, got {config.lr}")

    @classmethod
    def memory_profile(cls, config: Any, concept: Concept, model: Any) -> MemoryProfile | None:
        """What one item of the method's batch costs (``erase.memory``), so that on a GPU its batch can be split
        into micro-batches that fit; None (the default): the method keeps its batch as configured."""
        return None

    def setup(self, generator: torch.Generator) -> None:
        """One-off preparation (frozen copies, data, masks) before the first step; seeded by ``generator``."""

    @abstractmethod
    def changed_components(self) -> dict[str, nn.Module]:
        """The components the artifact must store, by attribute name (``unet``, ``text_encoder``, ``decoder``)."""

    def run_info(self) -> dict[str, Any]:
        """Facts decided during the run (e.g. a drawn remap target), recorded as ``erase.json``'s ``run``."""
        return {}

    def extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Extra safetensors files for the artifact, file stem -> tensors (e.g. a saliency mask)."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """State carried between steps besides the weights (checkpointed; 0-d tensors for counters)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned, when a run resumes."""
        if tensors:
            raise MethodConfigError(f"{self.name} carries no state, but the checkpoint holds {sorted(tensors)[0]}")


class _Trained(Method):
    """Methods with an optimizer: they name the parameters it moves."""

    @abstractmethod
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Named parameters (``component.param_name``) the optimizer moves."""

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam at ``config.lr`` unless a method needs otherwise (ESD, SalUn and Moon et al. use plain Adam)."""
        return torch.optim.Adam(params, lr=self.config.lr)


class GradientMethod(_Trained):
    """Kind (a): one loss per (micro-)step; the trainer takes the optimizer step."""

    kind = "gradient"

    @abstractmethod
    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of one (micro-)step; all randomness must come from ``generator``."""

    def after_backward(self) -> None:
        """Called once gradients are complete, before the optimizer step (e.g. SalUn's mask)."""


class SteppingMethod(_Trained):
    """Kind (b): the method runs the whole step (inner loops, several backward passes, extra optimizers).

    It must draw all randomness from ``ctx.generator()``, call ``ctx.backward`` for the outer
    loss (which stops on NaN before the weights move), step ``ctx.optimizer`` itself, and keep
    inner-loop gradients away from the trained parameters (``torch.autograd.grad`` on the inner
    variables, as the worked example in the tests does).
    """

    kind = "step"

    @abstractmethod
    def training_step(self, ctx: "StepContext") -> float:
        """One optimizer step; returns the outer loss value for the log."""


class ClosedFormMethod(Method):
    """Kind (c): an edit with no optimizer, applied once after ``setup``."""

    kind = "closed-form"

    @abstractmethod
    def apply(self, generator: torch.Generator) -> None:
        """Edit the weights in place (facts about the edit go to ``run_info``)."""


def named_trainable(component: str, module: nn.Module, keep: Callable[[str], bool]) -> dict[str, nn.Parameter]:
    """``component.name`` -> parameter for every parameter whose name passes ``keep``; others frozen."""
    out = {}
    for name, param in module.named_parameters():
        selected = bool(keep(name))
        param.requires_grad_(selected)
        if selected:
            out[f"{component}.{name}"] = param
    return out
