"""What the tests of drafters trained on a frozen autoregressive model share: a short
training run on the reversal model, the test sources, and the checks that decoding with
the drafter gives the model's greedy output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nargen.data import read_split
from nargen.data.batching import pad_sequences
from nargen.decoding import greedy
from nargen.models import Seq2SeqModule, load_drafter, load_module, read_checkpoint
from nargen.training.fit import run_fit

from conftest import reversal_config


def train_drafter(family: str, options: str, trained_run: Path, root: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """``family`` with ``options`` trained 400 updates on the reversal model (frozen),
    validating greedily: the run folder and the fit summary."""
    run_dir = tmp_path_factory.mktemp(family)
    config = reversal_config(
        root, run_dir, tmp_path_factory.mktemp("c"), 400, "--family", family, "--family_options", options,
        "--trainer.init_from", str(trained_run / "checkpoints" / "best.ckpt"), "--decode.validation", "{block: 0}",
    )
    return run_dir, run_fit(config)


def reversal_sources(run_dir: Path, root: Path, n: int = 48) -> tuple[Seq2SeqModule, torch.Tensor]:
    """The run's best checkpoint and the first ``n`` reversal test sources, padded."""
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    test = read_split(root, "test", "src", "tgt")
    rows = [torch.tensor(x + [module.ids.eos]) for x in module.tokenizer.encode(test.source[:n])]
    return module, pad_sequences(rows, module.ids.pad).to(module.device)


def greedy_lists(module: Seq2SeqModule, src: torch.Tensor) -> list[list[int]]:
    """The model's own greedy output for ``src``."""
    return greedy(module.model, src, **module.decoder_settings()).as_lists(module.ids.pad)


def assert_greedy_output(module: Seq2SeqModule, src: torch.Tensor, batch: int, **options: Any) -> None:
    """Decoding with ``options`` gives greedy's tokens and length caps, ``batch``
    sentences at a time (the first 12, or all at batch 16 and more)."""
    for start in range(0, 12 if batch < 16 else src.shape[0], batch):
        rows = src[start : start + batch]
        rows = rows[:, : int((rows != module.ids.pad).sum(1).max())]
        reference = greedy(module.model, rows, **module.decoder_settings())
        out = module.generate(rows, **options)
        assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
        assert torch.equal(out.hit_cap, reference.hit_cap)


def assert_only_the_drafter_trained(run_dir: Path, trained_run: Path) -> dict[str, torch.Tensor]:
    """The drafter's checkpoint holds the model's weights unchanged; returns its state."""
    teacher = read_checkpoint(trained_run / "checkpoints" / "best.ckpt")["state_dict"]
    trained = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    core = [k for k in teacher if k.startswith("model.")]
    assert core and all(torch.equal(trained[k], teacher[k]) for k in core)
    return trained


def assert_it_drafts_for_the_plain_model(run_dir: Path, trained_run: Path, own: Seq2SeqModule,
                                         src: torch.Tensor, block: int) -> None:
    """The checkpoint as ``--draft_ckpt`` of the plain model drafts what it drafts for
    itself (the same model underneath): the same tallies and greedy's output."""
    ar_path = trained_run / "checkpoints" / "best.ckpt"
    module = load_module(ar_path)
    drafter = load_drafter(str(run_dir / "checkpoints" / "best.ckpt"), module, str(ar_path))
    out = module.generate(src, draft=drafter, block=block)
    assert out.as_lists(module.ids.pad) == greedy_lists(module, src)
    tallies = [{k: v for k, v in c.items() if k != "draft_ns"}
               for c in (out.counts, own.generate(src, block=block).counts)]
    assert tallies[0] == tallies[1]
