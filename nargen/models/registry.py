"""The families nargen knows: each registers itself from its own module, nargen's
included, a user's too. A recipe names a family by its name, or as ``module:name``
for one defined outside the package (the module is imported, and its import registers
the family); a checkpoint records the module, so loading it imports the module again."""

from __future__ import annotations

import importlib
from typing import TypeVar

from nargen.models.base import Seq2SeqModule

FAMILIES: dict[str, type[Seq2SeqModule]] = {}
"""Every registered family by name."""

Family = TypeVar("Family", bound=type[Seq2SeqModule])


def register_family(module_class: Family) -> Family:
    """Register a ``Seq2SeqModule`` subclass under its ``family`` name (a class
    decorator). A second class under a taken name is refused."""
    name = module_class.family
    if not name:
        raise ValueError(f"{module_class.__qualname__} has no family name")
    known = FAMILIES.get(name)
    if known is not None and known is not module_class:
        raise ValueError(f"family {name!r} is already registered by {known.__module__}.{known.__qualname__}")
    FAMILIES[name] = module_class
    return module_class


def family_class(spec: str, module: str | None = None) -> type[Seq2SeqModule]:
    """The class of family ``spec``: a registered name, or ``module:name`` (the module
    imported first); ``module``: where a checkpoint says the family was defined."""
    name = spec
    if ":" in spec:
        module, name = spec.rsplit(":", 1)
    if name not in FAMILIES and module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"family {name!r}: cannot import {module!r} ({err})") from None
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(sorted(FAMILIES))}; "
                         "one defined elsewhere is named as module:name)")
    return FAMILIES[name]
