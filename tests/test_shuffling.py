"""Training batches are reshuffled every epoch, and a run killed in any epoch resumes
to exactly the weights of a run never killed."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections import Counter

import lightning as L
import pytest
import torch

from conftest import assert_same_weights, reversal_config, reversal_overrides
from nargen.training.fit import run_fit
from nargen.data import DataConfig, TokenBudgetBatchSampler, TranslationDataModule, token_budget_batches
from nargen.models import read_checkpoint


def epoch_batches(sampler: TokenBudgetBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_reshuffles_every_epoch_and_covers_every_example_once():
    lengths = [1 + (i * 7) % 23 for i in range(500)]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=200, shuffle=True, seed=5)
    epochs = [epoch_batches(sampler, e) for e in range(3)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(max(lengths[i] for i in b) * len(b) <= 200 for b in batches)
    assert epochs[0] != epochs[1] != epochs[2]
    # not only the batch order: sentences of equal length land in other batches
    as_sets = [{frozenset(b) for b in batches} for batches in epochs]
    assert as_sets[0] != as_sets[1]
    # the same seed and epoch give the same batches (what resume and DDP ranks rely on)
    again = TokenBudgetBatchSampler(lengths, max_tokens=200, shuffle=True, seed=5)
    assert epoch_batches(again, 1) == epochs[1]


def test_length_tiebreak_pads_less_and_keeps_batches_random_among_equal_keys():
    # pairs of equal cost (the longer side) but different shorter sides
    rng = random.Random(3)
    sides = [(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(2000)]
    lengths = [max(s, t) for s, t in sides]

    def padding(batches):
        return sum(max(sides[i][j] for i in b) * len(b) - sum(sides[i][j] for i in b)
                   for b in batches for j in (0, 1))

    plain = token_budget_batches(lengths, 300, seed=1)
    broken = token_budget_batches(lengths, 300, seed=1, tiebreak=sides)
    assert sorted(i for b in broken for i in b) == list(range(2000))
    assert all(max(lengths[i] for i in b) * len(b) <= 300 for b in broken)
    assert padding(broken) < 0.8 * padding(plain)
    # items equal in cost and tiebreak still change batches from one seed to the next
    other = token_budget_batches(lengths, 300, seed=2, tiebreak=sides)
    assert {frozenset(b) for b in broken} != {frozenset(b) for b in other}
    with pytest.raises(ValueError, match="tiebreak has 3 keys for 2000 lengths"):
        token_budget_batches(lengths, 300, tiebreak=sides[:3])


def test_evaluation_batches_do_not_shuffle():
    sampler = TokenBudgetBatchSampler([3, 1, 2, 2], max_tokens=4, shuffle=False)
    assert sampler.sampler is None
    assert epoch_batches(sampler, 0) == epoch_batches(sampler, 1)


class RecordBatches(L.LightningModule):
    """Records the example indices of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch["index"].tolist())
        return (self.weight * batch["src"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_training_reshuffles_batches_every_epoch(reversal_root, tmp_path):
    data = TranslationDataModule(DataConfig(
        corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
        vocab_size=36, cache_dir=str(tmp_path / "c"), max_tokens=1200))
    module = RecordBatches()
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)
    assert sorted(module.seen) == [0, 1, 2]
    n = len(data.train_set)
    for epoch, batches in module.seen.items():
        counts = Counter(i for b in batches for i in b)
        assert len(counts) == n and set(counts.values()) == {1}, epoch
    assert module.seen[0] != module.seen[1] != module.seen[2]


KILL_AT_STEP = """
import os, signal, sys
import lightning as L
from nargen.training import fit
from nargen.cli.main import main

class KillAfterCheckpoint(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == {step}:  # the checkpoint of step {step} is on disk
            os.kill(os.getpid(), signal.SIGKILL)

make_trainer = fit.make_trainer
def make_killing_trainer(*args):
    trainer = make_trainer(*args)
    trainer.callbacks.append(KillAfterCheckpoint())
    return trainer
fit.make_trainer = make_killing_trainer
main(["fit", *sys.argv[1:]])
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid_epoch_2", "closing_epoch_1"])
def test_shuffled_run_killed_in_a_later_epoch_resumes_to_the_uninterrupted_weights(
    where, reversal_root, tmp_path
):
    """SIGKILL `nargen fit` right after the checkpoint of step K (inside the third
    epoch, or at the step that closes the second), rerun the same command: the weights
    at the end are torch.equal to those of a run never killed."""
    cache = tmp_path / "cache"
    data = TranslationDataModule(DataConfig(
        corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
        vocab_size=36, cache_dir=str(cache), max_tokens=1200))
    data.setup()
    per_epoch = len(data.train_dataloader())
    kill_at = 2 * per_epoch + per_epoch // 2 if where == "mid_epoch_2" else 2 * per_epoch
    steps = 3 * per_epoch + 3
    extra = ("--model", "{preset: micro, dropout: 0.1}", "--trainer.checkpoint_every_steps", "1")
    run_fit(reversal_config(reversal_root, tmp_path / "whole", cache, steps, *extra))

    killed = tmp_path / "killed"
    args = reversal_overrides(reversal_root, killed, cache, steps, *extra)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AT_STEP.format(step=kill_at)), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == kill_at

    summary = run_fit(reversal_config(reversal_root, killed, cache, steps, *extra))
    assert summary["steps"] == steps
    assert_same_weights(tmp_path / "whole" / "checkpoints" / "last.ckpt", last)

