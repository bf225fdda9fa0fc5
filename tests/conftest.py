"""Shared fixtures: a synthetic reversal corpus and a tokenizer for it (no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nargen.training.recipe import FitConfig, load_fit_config
from nargen.training.fit import run_fit
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


def reversal_overrides(root: Path, run_dir: Path, cache: Path, steps: int, *extra: str) -> list[str]:
    """A micro autoregressive recipe on the reversal corpus, as `nargen fit` arguments."""
    return [
        "--family", "autoregressive",
        "--model", "{preset: micro, dropout: 0.0}",
        "--data.corpus", "reversal", "--data.root", str(root),
        "--data.src_lang", "src", "--data.tgt_lang", "tgt", "--data.test_split", "test",
        "--data.vocab_size", "36", "--data.max_tokens", "1200", "--data.cache_dir", str(cache),
        "--optim.lr", "3e-3", "--optim.warmup_steps", "50", "--optim.label_smoothing", "0.0",
        "--trainer.max_steps", str(steps), "--trainer.val_every_steps", str(steps),
        "--trainer.checkpoint_every_steps", "50", "--trainer.run_dir", str(run_dir),
        "--trainer.progress_bar", "false", "--eval.decodes", "[]",
        # fp32 everywhere: "auto" would train in bf16 on CPUs with native bf16 only.
        "--trainer.precision", "32-true", *extra,
    ]


def reversal_config(root: Path, run_dir: Path, cache: Path, steps: int, *extra: str) -> FitConfig:
    return load_fit_config(None, reversal_overrides(root, run_dir, cache, steps, *extra))


@pytest.fixture(scope="session")
def trained_run(reversal_root, tmp_path_factory) -> Path:
    """Train a micro model to reverse word sequences (about 20 s on 2 CPU cores)."""
    run_dir = tmp_path_factory.mktemp("run")
    summary = run_fit(reversal_config(reversal_root, run_dir, tmp_path_factory.mktemp("c"), 400))
    assert summary["steps"] == 400
    return run_dir


def train_parallel(
    root: Path, tmp_path_factory: pytest.TempPathFactory, family: str, *extra: str, steps: int = 600
) -> Path:
    """Train a micro parallel model on the reversal task (600 steps, about 40 s on 2
    CPU cores); returns its best checkpoint."""
    run_dir = tmp_path_factory.mktemp(family)
    run_fit(reversal_config(root, run_dir, tmp_path_factory.mktemp("c"), steps,
                            "--family", family, "--model.absolute_positions", "true", *extra))
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def trained_cmlm(reversal_root, tmp_path_factory) -> Path:
    return train_parallel(reversal_root, tmp_path_factory, "cmlm")


@pytest.fixture(scope="session")
def trained_nat(reversal_root, tmp_path_factory) -> Path:
    return train_parallel(reversal_root, tmp_path_factory, "nat")


@pytest.fixture(scope="session")
def trained_insertion(reversal_root, tmp_path_factory) -> Path:
    """Balanced-tree insertion model on the reversal task."""
    return train_parallel(reversal_root, tmp_path_factory, "insertion",
                          "--family_options", "{order: balanced_tree}")


@pytest.fixture(scope="session")
def trained_ctc(reversal_root, tmp_path_factory) -> Path:
    return train_parallel(reversal_root, tmp_path_factory, "ctc")


@pytest.fixture(scope="session")
def trained_dag(reversal_root, tmp_path_factory) -> Path:
    """DA-Transformer with glancing, as its recipes train it (300 steps: it learns the
    task in half the others' budget, and each of its steps costs about three times theirs)."""
    return train_parallel(reversal_root, tmp_path_factory, "dag", "--family_options", "{glat_ratio: 0.5}", steps=300)


@pytest.fixture(scope="session")
def trained_latent(reversal_root, tmp_path_factory) -> Path:
    """Latent Transformer, one latent per 2 tokens, 32 codes."""
    return train_parallel(reversal_root, tmp_path_factory, "latent",
                          "--family_options", "{compression: 1, codebook_size: 32}")


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoints hold bitwise-equal weights."""
    from nargen.models import read_checkpoint

    first, second = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
