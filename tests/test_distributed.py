"""Two-process (gloo) training on CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import sacrebleu

from nargen.cli.config import TrainerConfig
from nargen.cli.fit import per_process_data, process_layout
from nargen.data import DataConfig, TranslationDataModule, read_split
from nargen.data.batching import token_budget_batches
from nargen.models import load_module

from conftest import reversal_config, reversal_overrides


def test_cpu_processes_become_ddp_processes_sharing_the_token_budget(reversal_root, tmp_path):
    layout = process_layout(TrainerConfig(cpu_processes=2, accelerator="cpu"))
    assert (layout.accelerator, layout.devices, layout.strategy, layout.batch_split) == ("cpu", 2, "ddp", 2)
    config = reversal_config(reversal_root, tmp_path / "r", tmp_path / "c", 10)
    assert per_process_data(config, layout).max_tokens == config.data.max_tokens // 2
    # A GPU, or devices and strategy the recipe sets itself, are left as they are.
    for t in (TrainerConfig(cpu_processes=2, accelerator="gpu"),
              TrainerConfig(cpu_processes=2, accelerator="cpu", devices=3, strategy="ddp")):
        layout = process_layout(t)
        assert (layout.accelerator, layout.devices, layout.strategy, layout.batch_split) == (
            t.accelerator, t.devices, t.strategy, 1)
    tiny_budget = replace(config, data=replace(config.data, max_tokens=3))
    with pytest.raises(ValueError, match="max_tokens=3 cannot be split across trainer.cpu_processes=4"):
        per_process_data(tiny_budget, process_layout(TrainerConfig(cpu_processes=4, accelerator="cpu")))


@pytest.mark.slow
def test_two_cpu_processes_train_validate_and_count_one_budget_per_update(reversal_root, tmp_path):
    run_dir, steps = tmp_path / "ddp", 120
    args = reversal_overrides(reversal_root, run_dir, tmp_path / "c", steps,
                              "--trainer.cpu_processes", "2", "--trainer.threads", "1")
    proc = subprocess.run([sys.executable, "-m", "nargen.cli.main", "fit", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["processes"] == 2 and summary["steps"] == steps

    # An update of two processes holds about the target tokens of one process's batch
    # at the whole budget (not twice as many): the budget is split, not repeated.
    data = TranslationDataModule(DataConfig(
        corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
        vocab_size=36, cache_dir=str(tmp_path / "c"), max_tokens=1200))
    data.setup()
    targets = [len(t) + 1 for t in data.train_set.target]
    batches = token_budget_batches(data.train_set.lengths(), 1200, seed=1)
    per_batch = sum(targets) / len(batches)
    assert summary["target_tokens"] / steps == pytest.approx(per_batch, rel=0.15)
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        logged = [float(row["val_bleu"]) for row in csv.DictReader(handle) if row.get("val_bleu")]
    assert len(logged) == 1 and logged[0] > 20  # it learned something in 120 steps

    # The BLEU logged from both ranks' outputs equals single-process BLEU of the same
    # checkpoint on the same validation set.
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    val = read_split(reversal_root, "val", "src", "tgt")
    single = sacrebleu.corpus_bleu(module.translate(val.source).texts, [val.target]).score
    assert single == pytest.approx(logged[0], abs=1e-4)
