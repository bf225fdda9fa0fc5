"""Runs keep their history: per-attempt logs and recipes, a changed recipe refused on
resume, a fresh start that moves the old run aside; checkpoint averaging."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

from conftest import reversal_config
from nargen.config import ConfigError
from nargen.training.fit import run_fit
from nargen.cli.main import main
from nargen.models import load_module, read_checkpoint
from nargen.training.averaging import average_checkpoints


def metrics_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_resume_keeps_earlier_metrics_and_each_attempts_recipe(reversal_root, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "c"
    run_fit(reversal_config(reversal_root, run, cache, 20, "--trainer.checkpoint_every_steps", "10"))
    first = metrics_rows(run / "logs" / "version_0" / "metrics.csv")
    assert first
    run_fit(reversal_config(reversal_root, run, cache, 40, "--trainer.checkpoint_every_steps", "10"))
    assert metrics_rows(run / "logs" / "version_0" / "metrics.csv") == first  # untouched
    second = metrics_rows(run / "logs" / "version_1" / "metrics.csv")
    assert second and min(int(r["step"]) for r in second) >= 19  # the resumed attempt's own rows
    assert yaml.safe_load((run / "logs" / "version_1" / "config.yaml").read_text())["trainer"]["max_steps"] == 40
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 20  # the first recipe

    with pytest.raises(ConfigError, match="optim.lr"):  # a changed recipe is refused, naming the key
        run_fit(reversal_config(reversal_root, run, cache, 60, "--optim.lr", "1e-4"))
    summary = run_fit(reversal_config(reversal_root, run, cache, 20, "--trainer.fresh", "true"))
    assert summary["steps"] == 20
    assert (tmp_path / "run.previous-1" / "logs" / "version_1" / "metrics.csv").is_file()  # moved, not lost


@pytest.mark.slow
def test_keep_last_keeps_periodic_checkpoints_and_averaging_them_is_their_mean(reversal_root, tmp_path):
    run = tmp_path / "run"
    run_fit(reversal_config(reversal_root, run, tmp_path / "c", 30, "--trainer.checkpoint_every_steps", "10",
                            "--trainer.keep_last", "2", "--trainer.keep_best", "2",
                            "--trainer.val_every_steps", "10"))
    kept = sorted((run / "checkpoints").glob("step-*.ckpt"))
    assert [p.name for p in kept] == ["step-20.ckpt", "step-30.ckpt"]
    # keep_best: the two validations with the highest BLEU (of three) kept their weights
    bleu = {int(r["step"]) + 1: float(r["val_bleu"]) for r in metrics_rows(run / "logs" / "version_0" / "metrics.csv")
            if r.get("val_bleu")}
    top = {int(p.name.split("=")[1].split("-")[0]): p for p in (run / "checkpoints").glob("top-*.ckpt")}
    assert len(bleu) == 3 and len(top) == 2
    assert min(bleu[s] for s in top) >= max(bleu[s] for s in bleu.keys() - top.keys())
    for step, path in top.items():
        assert read_checkpoint(path)["global_step"] == step
    out = tmp_path / "avg.ckpt"
    assert main(["average", *map(str, kept), "--out", str(out)]) == 0
    a, b = (read_checkpoint(p)["state_dict"] for p in kept)
    averaged = read_checkpoint(out)["state_dict"]
    for name, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[name].double() + b[name].double()).div(2).to(value.dtype))
    load_module(out)  # self-contained: loads and runs without the run folder
    same = tmp_path / "same.ckpt"
    average_checkpoints([kept[0], kept[0], kept[0]], same)
    for name, value in read_checkpoint(same)["state_dict"].items():
        assert torch.equal(value, a[name])


@pytest.mark.slow
def test_fit_tests_the_mean_of_the_best_checkpoints_when_asked(reversal_root, tmp_path):
    run = tmp_path / "run"
    summary = run_fit(reversal_config(reversal_root, run, tmp_path / "c", 30, "--trainer.val_every_steps", "10",
                                      "--trainer.keep_best", "3", "--eval.average_best", "2",
                                      "--eval.decodes", "[{beam: 1}]", "--eval.latency_sentences", "0"))
    bleu = {int(r["step"]) + 1: float(r["val_bleu"]) for r in metrics_rows(run / "logs" / "version_0" / "metrics.csv")
            if r.get("val_bleu")}
    averaged = [int(p.split("top-step=")[1].split("-")[0]) for p in summary["averaged_checkpoints"]]
    assert len(averaged) == 2 and len(bleu) == 3
    assert min(bleu[s] for s in averaged) >= max(bleu[s] for s in bleu.keys() - set(averaged))  # the two best
    assert summary["tested_checkpoint"] == str(run / "checkpoints" / "averaged.ckpt") and summary["test"]
    a, b = (read_checkpoint(p)["state_dict"] for p in summary["averaged_checkpoints"])
    for name, value in read_checkpoint(summary["tested_checkpoint"])["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[name].double() + b[name].double()).div(2).to(value.dtype))


def test_averaging_more_checkpoints_than_kept_is_refused_before_training(reversal_root, tmp_path):
    with pytest.raises(ConfigError, match="eval.average_best=4 needs trainer.keep_best"):
        reversal_config(reversal_root, tmp_path / "run", tmp_path / "c", 30, "--trainer.keep_best", "2",
                        "--eval.average_best", "4")


@pytest.mark.slow
def test_tensorboard_logs_beside_the_csv_metrics(reversal_root, tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    run_fit(reversal_config(reversal_root, run_dir, tmp_path / "c", 10, "--trainer.tensorboard", "true",
                            "--trainer.log_every_n_steps", "5"))
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
