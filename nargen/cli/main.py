"""The ``nargen`` command: one verb a job; each verb's flags come from its settings
dataclasses (``nargen VERB --help``)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable

from nargen.bench.training import cmd_bench_train
from nargen.cli.commands import cmd_average, cmd_bench_kv_cache, cmd_bench_systems, cmd_diagnose, cmd_download
from nargen.cli.decoding import cmd_distill, cmd_evaluate, cmd_translate
from nargen.cli.prepare import cmd_prepare
from nargen.config import ConfigError
from nargen.data import CorpusError
from nargen.evaluation import format_record
from nargen.memory import keep_freed_memory
from nargen.models import CheckpointError, NonFiniteTrainingError
from nargen.training.recipe import parse_fit_args, to_dict


def cmd_fit(argv: list[str]) -> int:
    """``nargen fit``: jsonargparse reads the recipe and overrides (``--help`` lists every key)."""
    import yaml

    from nargen.training.fit import run_fit

    config, print_config, _ = parse_fit_args(argv)
    if print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    summary = run_fit(config)
    if summary is None:  # not the main process of a multi-process run
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "test"}, indent=2))
    for record in summary.get("test", []):
        print(format_record(record))
    return 0


COMMANDS: dict[tuple[str, ...], tuple[Callable[[list[str]], int], str]] = {
    ("fit",): (cmd_fit, "train a recipe (nargen fit RECIPE.yaml); any key overridable as --section.key VALUE"),
    ("prepare",): (cmd_prepare, "tokenize a recipe's training corpus once into memory-mapped ids "
                                "(fit does it on first use)"),
    ("translate",): (cmd_translate, "one output line per input line, streamed as input arrives"),
    ("evaluate",): (cmd_evaluate, "sacreBLEU, chrF and speed on a test set"),
    ("diagnose",): (cmd_diagnose, "oracle length, oracle order and the learned order of a parallel checkpoint"),
    ("distill",): (cmd_distill, "translate a corpus with a teacher (resumable)"),
    ("average",): (cmd_average, "average checkpoints' weights into one checkpoint"),
    ("download",): (cmd_download, "fetch a named corpus (needs a network)"),
    ("bench", "systems"): (cmd_bench_systems, "every system of a spec in one process: JSON, Markdown, plot"),
    ("bench", "train"): (cmd_bench_train, "training target tokens/s of a recipe over N updates after a warm-up"),
    ("bench", "kv-cache"): (cmd_bench_kv_cache, "greedy decoding with vs without the KV cache"),
}
"""Every verb (one or two words), its function and what it does."""


def usage() -> str:
    """``nargen --help``: the verbs."""
    from nargen import __version__

    width = max(len(" ".join(words)) for words in COMMANDS)
    lines = [f"nargen {__version__}: non-autoregressive and latent-variable translation on one transformer core",
             "", "usage: nargen VERB [--help] [flags]", ""]
    lines += [f"  {' '.join(words):<{width}}  {help}" for words, (_, help) in COMMANDS.items()]
    return "\n".join(lines)


def show_progress_messages() -> None:
    """The library's log messages (a corpus being prepared, lines dropped) on stderr."""
    logger = logging.getLogger("nargen")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nargen: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    show_progress_messages()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from nargen import __version__

        print(f"nargen {__version__}")
        return 0
    for words, (command, _) in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            try:
                return command(argv[len(words):])
            except (ConfigError, CorpusError, CheckpointError, NonFiniteTrainingError) as err:
                print(f"nargen {' '.join(words)}: error: {err}", file=sys.stderr)
                return 2
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(usage())
        return 0
    print(usage(), file=sys.stderr)
    print(f"\nnargen: error: unknown command {' '.join(argv[:2])!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
