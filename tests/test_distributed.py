"""Two-process (gloo) training on CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import sacrebleu

from nargen.data import DataConfig, TranslationDataModule, read_split
from nargen.data.batching import token_budget_batches
from nargen.data.datamodule import batch_keys
from nargen.models import load_module

from conftest import reversal_overrides


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_validates_and_counts_both(reversal_root, tmp_path):
    run_dir, steps = tmp_path / "ddp", 120
    args = reversal_overrides(reversal_root, run_dir, tmp_path / "c", steps,
                              "--trainer.strategy", "ddp", "--trainer.devices", "2",
                              "--trainer.accelerator", "cpu", "--trainer.threads", "1")
    proc = subprocess.run([sys.executable, "-m", "nargen.cli.main", "fit", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["processes"] == 2 and summary["steps"] == steps
    assert len(summary["peak_rss_mib"]) == 2 and min(summary["peak_rss_mib"]) > 100  # each rank's own
    assert summary["seconds_to_first_update"] > 0

    # Each process reads its own batches of the whole budget, and the throughput counts
    # both: about twice one batch's target tokens per update.
    data = TranslationDataModule(DataConfig(
        corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
        vocab_size=36, cache_dir=str(tmp_path / "c"), max_tokens=1200))
    data.setup()
    targets = data.train_set.side_lengths()[1] + 1
    batches = token_budget_batches(batch_keys(data.train_set)[0], 1200, seed=1)
    per_batch = sum(targets) / len(batches)
    assert summary["target_tokens"] / steps == pytest.approx(2 * per_batch, rel=0.15)
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        logged = [float(row["val_bleu"]) for row in csv.DictReader(handle) if row.get("val_bleu")]
    assert len(logged) == 1 and logged[0] > 20  # it learned something in 120 steps

    # The BLEU logged from both ranks' outputs equals single-process BLEU of the same
    # checkpoint on the same validation set.
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    val = read_split(reversal_root, "val", "src", "tgt")
    single = sacrebleu.corpus_bleu(module.translate(val.source).texts, [val.target]).score
    assert single == pytest.approx(logged[0], abs=1e-4)
