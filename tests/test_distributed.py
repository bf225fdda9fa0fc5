"""Two-process (gloo) training on CPU."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import sacrebleu

from nargen.data import read_split
from nargen.models import load_module

from conftest import reversal_overrides


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_validates(reversal_root, tmp_path):
    run_dir = tmp_path / "ddp"
    args = reversal_overrides(reversal_root, run_dir, tmp_path / "c", 120,
                              "--trainer.strategy", "ddp", "--trainer.devices", "2",
                              "--trainer.accelerator", "cpu")
    proc = subprocess.run([sys.executable, "-m", "nargen.cli.main", "fit", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        logged = [float(row["val_bleu"]) for row in csv.DictReader(handle) if row.get("val_bleu")]
    assert len(logged) == 1 and logged[0] > 20  # it learned something in 120 steps

    # The BLEU logged from both ranks' outputs equals single-process BLEU of the same
    # checkpoint on the same validation set.
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    val = read_split(reversal_root, "val", "src", "tgt")
    single = sacrebleu.corpus_bleu(module.translate(val.source).texts, [val.target]).score
    assert single == pytest.approx(logged[0], abs=1e-4)
