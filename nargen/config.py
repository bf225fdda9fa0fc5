"""Flags from dataclasses: a command's settings are typed dataclasses, and jsonargparse
builds its flags from their fields (name, type, default, attribute docstring), under
the names recipes and the Python API use (``--max_tokens``; ``--max-tokens`` is read
as the same flag)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Optional

import docstring_parser
import yaml
from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace, set_parsing_settings


class ConfigError(ValueError):
    """A recipe or override names an unknown key or holds a bad value."""


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types and defaults) with the epilog's lines kept as written,
    and the docstrings' ``literal`` markup shown as plain text."""

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).replace("``", "")


def dataclass_parser(cls: type, prog: str, description: str) -> ArgumentParser:
    """A jsonargparse parser whose keys, types, defaults and help are ``cls``'s fields."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False,
                            default_meta=False, formatter_class=HelpFormatter, print_config=None)
    parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
    return parser


def message(err: Exception) -> str:
    """An error's text on one line."""
    return " ".join(str(err).split())


def load_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, type-checked; errors name ``where``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    parser = dataclass_parser(cls, where, "")
    try:
        return cls(**vars(parser.instantiate(parser.parse_object(values))))
    except (ArgumentError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {message(err)}") from None


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds; errors name the file (``what``: recipe, spec...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping")
    return values


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a settings dataclass as a user sees it."""

    name: str
    type: Any
    default: Any
    """None where the field has no default (``required``)."""
    doc: str
    """Its attribute docstring, on one line."""
    required: bool
    metadata: Any


@functools.cache
def dataclass_fields(cls: type) -> tuple[Field, ...]:
    """The fields of dataclass ``cls`` in order, with their resolved types and their
    attribute docstrings (a base class's included)."""
    hints = typing.get_type_hints(cls)
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a base's docs, then its subclasses'
        docs.update((p.arg_name, " ".join((p.description or "").split()))
                    for p in docstring_parser.parse_from_object(klass).params if p.description)
    fields = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (None if required else f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())  # type: ignore[misc]
        fields.append(Field(f.name, hints[f.name], default, docs.get(f.name, ""), required, f.metadata))
    return tuple(fields)


POSITIONAL = {"positional": True}
"""Field metadata of a positional argument (``{"aliases": ("-i",)}``: a flag's short
spelling)."""


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A command's parser; errors raise ``ConfigError`` (the caller prints them)."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False,
                          default_meta=False, formatter_class=HelpFormatter)


def _list_item(hint: Any) -> Any:
    """``X`` for ``list[X]`` (or ``list[X] | None``), else None."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [h for h in typing.get_args(hint) if h is not type(None)] if union else [hint]
    if len(args) == 1 and typing.get_origin(args[0]) is list:
        return typing.get_args(args[0])[0]
    return None


def add_flag(group: Any, name: str, hint: Any, default: Any, doc: str, *,
             required: bool = False, positional: bool = False, aliases: tuple[str, ...] = ()) -> None:
    """One flag (or positional argument) ``name`` of type ``hint`` (also spelt
    ``aliases``, e.g. ``-i``): a bool flag given alone means true; a list takes its items
    one after another."""
    kwargs: dict[str, Any] = {"help": doc or None}
    item = _list_item(hint)
    if item is not None:
        kwargs.update(type=item, nargs="+" if positional or required else "*")
    elif hint is bool or hint == Optional[bool]:
        kwargs.update(type=Optional[bool], nargs="?", const=True)
    else:
        kwargs["type"] = hint
    if positional:
        group.add_argument(name, **kwargs)
        return
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    group.add_argument(f"--{name}", *aliases, **kwargs)


def add_dataclass_flags(parser: ArgumentParser, cls: type, title: str | None = None) -> None:
    """A flag for each field of dataclass ``cls`` (in a group named ``title``, if given)."""
    group = parser.add_argument_group(title) if title else parser
    for f in dataclass_fields(cls):
        add_flag(group, f.name, f.type, f.default, f.doc, required=f.required,
                 positional=bool(f.metadata.get("positional")), aliases=f.metadata.get("aliases", ()))


def from_namespace(cls: type, namespace: Namespace) -> Any:
    """The ``cls`` whose fields ``namespace`` holds."""
    return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls)})


def parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """``argv`` parsed, dashes inside long flags read as underscores; a bad flag or
    value raises ``ConfigError`` naming it."""
    argv = [underscored(a) for a in argv]
    try:
        return parser.parse_args(argv)
    except Exception as err:  # jsonargparse raises ArgumentError and its own kinds
        raise ConfigError(message(err)) from None


def underscored(arg: str) -> str:
    """A long flag with the dashes in its name read as underscores (``--max-tokens``
    is ``--max_tokens``); anything else as it is."""
    if not arg.startswith("--") or len(arg) < 3:
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value
