"""Recipes: typed dataclass sections, read from YAML and ``--section.key VALUE`` overrides
by jsonargparse (keys, types, defaults and docs in ``nargen fit --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from argparse import ArgumentError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from nargen.data import DataConfig
from nargen.models import DecodeConfig, OptimConfig


class ConfigError(ValueError):
    """A recipe or override names an unknown key or holds a bad value."""


@dataclass
class TrainerConfig:
    """How long and where to train; Lightning Trainer settings."""

    run_dir: str = "runs/default"
    """Run folder: config, logs, checkpoints; running again resumes it."""
    max_steps: int = -1
    """Stop after this many updates (-1: no step limit)."""
    max_epochs: int | None = None
    """Stop after this many epochs (default: none when steps or time bound the run)."""
    max_time_minutes: float | None = None
    """Stop after this many minutes of training (the CPU recipes' budget)."""
    precision: str = "auto"
    """``auto``: bf16-mixed on a GPU and on a CPU with native bf16 matrix products
    (AVX512-BF16 or AMX), 32-true on other CPUs; or 32-true, bf16-mixed, 16-mixed."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu."""
    devices: Any = 1
    """Lightning devices: a count, a list of ids, or auto."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ..."""
    gradient_clip_val: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    accumulate_grad_batches: int = 1
    """Batches per update."""
    checkpoint_every_steps: int = 500
    """Write last.ckpt (and keep_last checkpoints) every N updates."""
    val_every_steps: int | None = None
    """Validate every N training steps (default: at the end of each epoch)."""
    log_every_n_steps: int = 50
    """Log training metrics every N updates."""
    seed: int = 1
    """Seed of weights, dropout and masking."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default); per process in a multi-process run."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""
    keep_last: int = 0
    """Also keep the last N periodic checkpoints (``step-*.ckpt``), e.g. for ``nargen average``."""
    keep_best: int = 0
    """Also keep the N checkpoints with the best validation BLEU (``top-step=S-bleu=B.ckpt``)."""
    init_from: str | None = None
    """Start the transformer core (embeddings, encoder, decoder) from this checkpoint's
    weights instead of random ones, e.g. the autoregressive teacher's for a parallel
    student: same tokenizer and sizes, any family; the family's own parameters start
    fresh, and a resumed run ignores it (its last.ckpt holds everything)."""
    fresh: bool = False
    """Start over: an existing run folder is moved aside to ``RUN_DIR.previous-N`` (nothing is deleted)."""
    allow_config_change: bool = False
    """Resume even when the recipe changed in keys other than the budget and logging ones."""
    compile: bool = False
    """Compile the family's loss (forward and backward) with ``torch.compile`` (shapes
    dynamic): traced once in the first updates, then fused kernels every update."""
    tensorboard: bool = False
    """Also log to TensorBoard, in ``RUN_DIR/tensorboard`` (needs ``pip install tensorboard``)."""


@dataclass
class EvalConfig:
    """The test evaluation nargen fit prints at the end."""

    decodes: list[dict[str, Any]] = field(default_factory=lambda: [{"beam": 1}, {"beam": 4}])
    """Decoder options for each test evaluation (e.g. ``{beam: 4}``, ``{iterations: 10}``)."""
    latency_sentences: int = 100
    """Test sentences timed one at a time (batch size 1)."""
    average_best: int = 0
    """Score the mean of the N checkpoints with the best validation BLEU
    (``checkpoints/averaged.ckpt``, from the ``top-*`` files; needs ``trainer.keep_best``
    >= N) instead of ``best.ckpt``. 0: ``best.ckpt``."""


@dataclass
class FitConfig:
    """A recipe: family and model, data, optimizer, decoding, trainer, test evaluation"""

    family: str = "autoregressive"
    """autoregressive, nat, cmlm, insertion, ctc, dag, latent or blockwise (draft heads on a
    trained autoregressive model: needs trainer.init_from); a family defined outside
    nargen as ``module:name`` (importing the module registers it)."""
    family_options: dict[str, Any] = field(default_factory=dict)
    """Settings only the family has (e.g. ``{order: balanced_tree}`` for insertion,
    ``{upsample: 4.0, glat_ratio: 0.5}`` for dag); checked against the family."""
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    """``preset`` (micro, tiny, small, base) plus any ``TransformerConfig`` field to change
    (e.g. ``n_kv_heads``, ``dropout``, ``absolute_positions``)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types and defaults) with the epilog's lines kept as written,
    and the docstrings' ``literal`` markup shown as plain text."""

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).replace("``", "")


def _parser(cls: type, prog: str, description: str) -> ArgumentParser:
    """A jsonargparse parser whose keys, types, defaults and help are ``cls``'s fields."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False,
                            default_meta=False, formatter_class=_HelpFormatter, print_config=None)
    parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
    return parser


def fit_parser() -> ArgumentParser:
    """``nargen fit``'s parser: a recipe (``--config``) and every key of :class:`FitConfig`."""
    parser = _parser(FitConfig, "nargen fit", "Train a recipe and print its test BLEU. Every recipe key can\n"
                     "be given as --section.key VALUE, after the recipe (which may also come first:\n"
                     "nargen fit RECIPE.yaml). Running a run_dir again resumes it.")
    parser.epilog = decoder_options_help()
    parser.add_argument("--config", action="config", help="YAML recipe, e.g. recipes/multi30k/ar_tiny.yaml")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe (YAML, re-usable as --config) and exit")
    return parser


def decoder_options_help() -> str:
    """Each family's decoder options (``decode.options``) with their defaults."""
    from nargen.models import FAMILIES

    lines = ["decoder options (decode.options, decode.validation, eval.decodes; the same names\n"
             "as translate's flags and the Python API's keywords), by family:"]
    for name in sorted(FAMILIES):
        family = FAMILIES[name]
        options = ", ".join(f"{k}={v!r}" for k, v in family.decode_defaults.items()
                            if k not in family.call_only_options)
        lines.append(f"  {name}: {options}")
    return "\n".join(lines)


def _message(err: Exception) -> str:
    return " ".join(str(err).split())


def parse_fit_args(args: list[str]) -> tuple[FitConfig, bool]:
    """The checked recipe that ``nargen fit ARGS`` names, and whether ``--print-config``
    was asked for. Unknown keys and bad values are named before any data is read: in the
    recipe file when it is wrong on its own, else in the command line."""
    args = list(args)
    if args and not args[0].startswith("-"):
        args[0:1] = ["--config", args[0]]  # nargen fit RECIPE.yaml
    parser = fit_parser()
    for i, arg in enumerate(args[:-1]):
        if arg == "--config":
            path = Path(args[i + 1])
            read_yaml(path, "recipe")  # names a missing or non-mapping file
            try:
                parser.parse_path(path)
            except (ArgumentError, ValueError, TypeError) as err:
                raise ConfigError(f"{path}: {_message(err)}") from None
    try:
        namespace = parser.parse_args(args)
    except (ArgumentError, ValueError, TypeError) as err:
        raise ConfigError(f"command line: {_message(err)}") from None
    print_config = namespace.pop("print_config")
    namespace.pop("config", None)
    config = FitConfig(**vars(parser.instantiate(namespace)))
    check_family_and_model(config)
    if config.eval.average_best < 0 or config.eval.average_best > config.trainer.keep_best:
        raise ConfigError(f"eval.average_best={config.eval.average_best} needs trainer.keep_best >= it "
                          f"(the checkpoints it averages), got {config.trainer.keep_best}")
    if config.trainer.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("trainer.tensorboard needs the tensorboard package: pip install tensorboard")
    return config, print_config


def load_fit_config(path: str | Path | None, overrides: list[str]) -> FitConfig:
    """Read a recipe (if given), apply ``--section.key VALUE`` overrides, check every key."""
    return parse_fit_args((["--config", str(path)] if path is not None else []) + list(overrides))[0]


def load_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, type-checked; errors name ``where``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    parser = _parser(cls, where, "")
    try:
        return cls(**vars(parser.instantiate(parser.parse_object(values))))
    except (ArgumentError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {_message(err)}") from None


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


def check_family_and_model(config: FitConfig) -> None:
    """Fail before any data is read when the family, its options or the model are wrong."""
    from nargen.core import TransformerConfig
    from nargen.models import family_class
    from nargen.models.base import check_decode_options

    try:
        family = family_class(config.family)
    except ValueError as err:
        raise ConfigError(f"family: {err}") from None
    load_dataclass(family.options_class, config.family_options, "family_options")
    named = [("decode.options", config.decode.options), ("decode.validation", config.decode.validation)]
    named += [(f"eval.decodes[{i}]", d) for i, d in enumerate(config.eval.decodes)]
    for where, options in named:
        if isinstance(options, dict) and "eval" in where:
            options = {k: v for k, v in options.items() if k != "max_tokens"}
        try:
            check_decode_options(family.family, family.decode_defaults, options, where,
                                 family.call_only_options)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    model = dict(config.model)
    try:
        TransformerConfig.from_preset(model.pop("preset", "tiny"), **model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.model: {err}") from None


def to_dict(config: FitConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["optim"]["betas"] = list(values["optim"]["betas"])
    return values
