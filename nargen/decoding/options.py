"""Decoder options as typed dataclasses: each family declares its own (names, types,
defaults and an attribute docstring each), and every place that takes options from a
user (recipes, flags, bench specs, the Python API) checks them against it."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from nargen.config import dataclass_fields


@dataclass
class DecodingOptions:
    """Options every family's decoding takes; a family's own dataclass extends it."""

    compile: bool = False
    """Compile the encoder and the decoder passes with ``torch.compile`` (an incremental
    decoder's steps over a cache of fixed shapes; CUDA graphs on a GPU)."""


CALL_ONLY = {"call_only": True}
"""Field metadata of an option only code can pass (a loaded drafter or reranker), not a
recipe or a flag: ``field(default=None, metadata=CALL_ONLY)``."""


@dataclass(frozen=True)
class OptionField:
    """One decoder option as a user sees it."""

    name: str
    type: Any
    default: Any
    doc: str
    call_only: bool


def option_fields(options_class: type) -> tuple[OptionField, ...]:
    """The options of ``options_class`` (a ``DecodingOptions`` dataclass), in order."""
    return tuple(OptionField(f.name, f.type, f.default, f.doc, bool(f.metadata.get("call_only")))
                 for f in dataclass_fields(options_class))


def option_defaults(options_class: type) -> dict[str, Any]:
    """Every option of ``options_class`` with its default."""
    return {f.name: f.default for f in option_fields(options_class)}


def _matches(value: Any, hint: Any) -> bool:
    """``value`` is of type ``hint`` (an int passes as a float; a bool not as a number)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def type_name(hint: Any) -> str:
    """How an error message names a type: ``int``, ``int or None``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def check_options(options_class: type, family: str, options: Any, where: str,
                  from_code: bool = False) -> None:
    """Raise ``ValueError`` naming ``where``, the family and the option when ``options``
    holds a name the family does not take (or one only code can pass, unless
    ``from_code``), or a value of the wrong type."""
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a mapping, got {options!r}")
    fields = {f.name: f for f in option_fields(options_class) if from_code or not f.call_only}
    for name, value in options.items():
        f = fields.get(name)
        if f is None:
            raise ValueError(f"{where}: {name} does not apply to the {family!r} family "
                             f"(it takes: {', '.join(fields)})")
        if not _matches(value, f.type):
            raise ValueError(f"{where}: {name} must be {type_name(f.type)}, got {value!r}")


@dataclass
class LengthCapOptions(DecodingOptions):
    """The output length cap of a decoder that builds its output pass by pass."""

    max_len_a: float = 1.5
    """Output length cap: ``max_len_a * source length + max_len_b`` tokens."""
    max_len_b: int = 10
    """See ``max_len_a``."""


@dataclass
class SamplingOptions(DecodingOptions):
    """Drawing tokens instead of taking the argmax."""

    sampling: bool = False
    """Draw each token from the softmax instead of taking the argmax."""
    temperature: float = 1.0
    """Softmax temperature of the draw."""
    top_k: int = 0
    """Draw among the k most likely tokens (0: all)."""
    seed: int | None = None
    """Seed of a repeatable draw (default: the global generator)."""
