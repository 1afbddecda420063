"""The method registry: a plain dict from method name to its class.

Adding a method = one file under ``erase/methods/`` plus one entry below.
"""

from __future__ import annotations

from erase.methods.advunlearn import AdvUnlearn
from erase.methods.base import Method
from erase.methods.config import MethodConfigError
from erase.methods.esd import ESD
from erase.methods.feature_unlearning import FeatureUnlearning
from erase.methods.salun import SalUn

METHODS: dict[str, type[Method]] = {
    ESD.name: ESD,
    SalUn.name: SalUn,
    FeatureUnlearning.name: FeatureUnlearning,
    AdvUnlearn.name: AdvUnlearn,
}


def get_method(name: str) -> type[Method]:
    """The class registered under ``name`` (case-insensitive); unknown names raise a one-line error."""
    key = name.strip().lower()
    if key not in METHODS:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[key]


__all__ = ["METHODS", "Method", "MethodConfigError", "get_method"]
