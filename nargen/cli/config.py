"""Recipe files: YAML, dotted command-line overrides, typed sections."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nargen.data import DataConfig
from nargen.models import DecodeConfig, OptimConfig


class ConfigError(ValueError):
    """A recipe or override names an unknown key or holds a bad value."""


@dataclass
class TrainerConfig:
    """How long and where to train; Lightning Trainer settings."""

    run_dir: str = "runs/default"
    max_steps: int = -1
    max_epochs: int | None = None
    max_time_minutes: float | None = None
    precision: str = "auto"
    """``auto``: bf16-mixed on a GPU, 32-bit on CPU."""
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    checkpoint_every_steps: int = 500
    val_every_steps: int | None = None
    """Validate every N training steps (default: at the end of each epoch)."""
    log_every_n_steps: int = 50
    seed: int = 1
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    progress_bar: bool = True
    keep_last: int = 0
    """Also keep the last N periodic checkpoints (``step-*.ckpt``), e.g. for ``nargen average``."""
    fresh: bool = False
    """Start over: an existing run folder is moved aside to ``RUN_DIR.previous-N`` (nothing is deleted)."""
    allow_config_change: bool = False
    """Resume even when the recipe changed in keys other than the budget and logging ones."""


@dataclass
class EvalConfig:
    """The test evaluation ``nargen fit`` prints at the end."""

    decodes: list[dict[str, Any]] = field(default_factory=lambda: [{"beam": 1}, {"beam": 4}])
    """Decoder options for each test evaluation (e.g. ``{beam: 4}``, ``{iterations: 10}``)."""
    latency_sentences: int = 100


@dataclass
class FitConfig:
    family: str = "autoregressive"
    family_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--trainer.max_steps", "20", "--data.root=DIR"]`` to a nested dict (YAML values)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --section.key VALUE, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} has no value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, naming any unknown key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {where}.{key} (known: {', '.join(known)})")
        sub = known[key].type
        sub_cls = _dataclass_named(sub)
        if sub_cls:
            kwargs[key] = build(sub_cls, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, str(sub), f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Numbers YAML reads as strings (``3e-3``) become the float or int the field wants."""
    if not isinstance(value, str) or "str" in annotation or "Any" in annotation:
        return value
    for name, kind in (("float", float), ("int", int)):
        if name in annotation:
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"{where} must be {name}, got {value!r}") from None
    return value


def _dataclass_named(type_name: Any) -> type | None:
    for candidate in (DataConfig, OptimConfig, DecodeConfig, TrainerConfig, EvalConfig):
        if type_name in (candidate, candidate.__name__):
            return candidate
    return None


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


def load_fit_config(path: str | Path | None, overrides: list[str]) -> FitConfig:
    """Read a recipe (if given), apply overrides, and check every key."""
    values = read_yaml(path, "recipe") if path is not None else {}
    values = merge(values, parse_overrides(overrides))
    config = build(FitConfig, values, "config")
    check_family_and_model(config)
    return config


def check_family_and_model(config: FitConfig) -> None:
    """Fail before any data is read when the family, its options or the model are wrong."""
    from nargen.core import TransformerConfig
    from nargen.models import FAMILIES

    if config.family not in FAMILIES:
        raise ConfigError(f"unknown family {config.family!r} (known: {', '.join(sorted(FAMILIES))})")
    try:
        FAMILIES[config.family].options_class(**config.family_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.family_options: {err}") from None
    from nargen.cli.options import FAMILY_DECODE_OPTIONS

    allowed = FAMILY_DECODE_OPTIONS[config.family] - {"rerank", "draft"}
    named = [("config.decode.options", config.decode.options),
             ("config.decode.validation", config.decode.validation)]
    named += [(f"config.eval.decodes[{i}]", d) for i, d in enumerate(config.eval.decodes)]
    for where, options in named:
        if not isinstance(options, dict):
            raise ConfigError(f"{where} must be a mapping, got {options!r}")
        unknown = sorted(set(options) - allowed - ({"max_tokens"} if "eval" in where else set()))
        if unknown:
            raise ConfigError(f"{where}: {', '.join(unknown)} does not apply to the "
                              f"{config.family!r} family (known: {', '.join(sorted(allowed))})")
    model = dict(config.model)
    try:
        TransformerConfig.from_preset(model.pop("preset", "tiny"), **model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.model: {err}") from None


def to_dict(config: FitConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["optim"]["betas"] = list(values["optim"]["betas"])
    return values
