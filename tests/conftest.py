"""Shared fixtures: a synthetic reversal corpus and a tokenizer for it (no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nargen.data import Tokenizer, train_tokenizer

WORDS = "ka lo mi nu pe ro su ti ve xo za bu".split()
VOCAB = 36  # 6 reserved ids + one piece per word + characters


def reversal_pairs(n: int, seed: int, min_len: int = 3, max_len: int = 8) -> tuple[list[str], list[str]]:
    """Source: random words; target: the same words reversed."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]
    return src, [" ".join(reversed(s.split())) for s in src]


def write_split(root: Path, split: str, src: list[str], tgt: list[str], langs=("src", "tgt")) -> None:
    (root / f"{split}.{langs[0]}").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (root / f"{split}.{langs[1]}").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


@pytest.fixture(scope="session")
def reversal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus folder with train/val/test splits of the reversal task."""
    root = tmp_path_factory.mktemp("reversal")
    for split, n, seed in (("train", 3000, 0), ("val", 100, 1), ("test", 100, 2)):
        write_split(root, split, *reversal_pairs(n, seed))
    return root


@pytest.fixture(scope="session")
def tokenizer(reversal_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    src, tgt = reversal_pairs(3000, 0)
    return train_tokenizer(src + tgt, VOCAB, tmp_path_factory.mktemp("spm"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    random.seed(0)
