"""``nargen prepare``: tokenize a recipe's training corpus once into memory-mapped ids."""

from __future__ import annotations

import json

from nargen.training.recipe import parse_fit_args
from nargen.data import TranslationDataModule


def cmd_prepare(argv: list[str]) -> int:
    """Prepare the corpus a recipe trains on (``fit`` does the same on its first start),
    and print where it went, its size and its content digest."""
    config, _, _ = parse_fit_args(argv)
    corpus = TranslationDataModule(config.data).prepared
    meta = corpus.meta
    print(json.dumps({
        "folder": str(corpus.folder),
        "pairs": meta["lines"],
        "source_tokens": int(corpus.offsets["source"][-1]),
        "target_tokens": int(corpus.offsets["target"][-1]),
        "dtype": meta["dtype"],
        "prepare_seconds": meta["seconds"],
        "sha256": meta["sha256"],
    }, indent=2))
    return 0
