"""Recipes: typed dataclass sections, read from YAML and ``--section.key VALUE`` overrides
by jsonargparse (keys, types, defaults and docs in ``nargen fit --help``)."""

from __future__ import annotations

import dataclasses
import importlib.util
from argparse import ArgumentError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from nargen.config import (
    ConfigError, add_dataclass_flags, dataclass_parser, from_namespace, load_dataclass, message, read_yaml, underscored,
)
from nargen.data import DataConfig
from nargen.models import DecodeConfig, OptimConfig


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
    """A registered family's name (the end of this help lists them with their decoder
    options), or one defined outside nargen as ``module:name`` (importing the module
    registers it)."""
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


def fit_parser() -> ArgumentParser:
    """``nargen fit``'s parser: a recipe (``--config``) and every key of :class:`FitConfig`."""
    parser = dataclass_parser(FitConfig, "nargen fit", "Train a recipe and print its test BLEU. Every recipe key can\n"
                     "be given as --section.key VALUE, after the recipe (which may also come first:\n"
                     "nargen fit RECIPE.yaml). Running a run_dir again resumes it.")
    parser.epilog = decoder_options_help()
    parser.add_argument("--config", action="config", help="YAML recipe, e.g. recipes/multi30k/ar_tiny.yaml")
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved recipe (YAML, re-usable as --config) and exit")
    return parser


def decoder_options_help() -> str:
    """Each family's decoder options (``decode.options``) with their defaults."""
    from nargen.decoding.options import option_fields
    from nargen.models import FAMILIES

    lines = ["decoder options (decode.options, decode.validation, eval.decodes; the same names\n"
             "as translate's flags and the Python API's keywords), by family:"]
    for name in sorted(FAMILIES):
        family = FAMILIES[name]
        options = ", ".join(f"{f.name}={f.default!r}" for f in option_fields(family.decoding_options)
                            if not f.call_only)
        lines.append(f"  {name}: {options}")
    return "\n".join(lines)


def parse_fit_args(args: list[str], extra: type | None = None) -> tuple[FitConfig, bool, Any]:
    """The checked recipe that ``nargen fit ARGS`` names, whether ``--print_config`` was
    asked for, and the settings of dataclass ``extra`` (a command's own flags beside the
    recipe's keys; None without it). Unknown keys and bad values are named before any
    data is read: in the recipe file when it is wrong on its own, else in the command
    line."""
    args = [underscored(arg) for arg in args]
    if args and not args[0].startswith("-"):
        args[0:1] = ["--config", args[0]]  # nargen fit RECIPE.yaml
    parser = fit_parser()
    if extra is not None:
        add_dataclass_flags(parser, extra, extra.__doc__)
    for i, arg in enumerate(args[:-1]):
        if arg == "--config":
            path = Path(args[i + 1])
            read_yaml(path, "recipe")  # names a missing or non-mapping file
            try:
                parser.parse_path(path)
            except (ArgumentError, ValueError, TypeError) as err:
                raise ConfigError(f"{path}: {message(err)}") from None
    try:
        namespace = parser.parse_args(args)
    except (ArgumentError, ValueError, TypeError) as err:
        raise ConfigError(f"command line: {message(err)}") from None
    print_config = namespace.pop("print_config")
    namespace.pop("config", None)
    settings = from_namespace(extra, namespace) if extra is not None else None
    for name in vars(settings) if settings is not None else ():
        namespace.pop(name)
    config = FitConfig(**vars(parser.instantiate(namespace)))
    check_family_and_model(config)
    if config.eval.average_best < 0 or config.eval.average_best > config.trainer.keep_best:
        raise ConfigError(f"eval.average_best={config.eval.average_best} needs trainer.keep_best >= it "
                          f"(the checkpoints it averages), got {config.trainer.keep_best}")
    if config.trainer.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("trainer.tensorboard needs the tensorboard package: pip install tensorboard")
    return config, print_config, settings


def load_fit_config(path: str | Path | None, overrides: list[str]) -> FitConfig:
    """Read a recipe (if given), apply ``--section.key VALUE`` overrides, check every key."""
    return parse_fit_args((["--config", str(path)] if path is not None else []) + list(overrides))[0]


def check_family_and_model(config: FitConfig) -> None:
    """Fail before any data is read when the family, its options or the model are wrong."""
    from nargen.core import TransformerConfig
    from nargen.models import family_class

    try:
        family = family_class(config.family)
    except ValueError as err:
        raise ConfigError(f"family: {err}") from None
    load_dataclass(family.options_class, config.family_options, "family_options")
    named = [("decode.options", config.decode.options), ("decode.validation", config.decode.validation)]
    named += [(f"eval.decodes[{i}]", d) for i, d in enumerate(config.eval.decodes)]
    for where, options in named:
        try:
            family.check_options(options, where)
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
