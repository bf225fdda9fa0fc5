"""``nargen bench train``: training throughput of a recipe over a fixed number of updates
after a warm-up, with the same training step as ``nargen fit`` (model, loss, optimizer,
clipping, precision) but no validation, checkpoints or logs."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import lightning as L
import torch

from nargen.cli.config import FitConfig, parse_fit_args
from nargen.cli.fit import build_module, resolve_precision
from nargen.data import TranslationDataModule
from nargen.models.throughput import ThroughputMonitor


def train_throughput(config: FitConfig, steps: int, warmup_steps: int) -> dict:
    """Train ``warmup_steps + steps`` updates of ``config`` from scratch; target tokens/s
    (padding excluded) over the last ``steps``."""
    t = config.trainer
    if t.threads:
        torch.set_num_threads(t.threads)
    L.seed_everything(t.seed, workers=True, verbose=False)
    datamodule = TranslationDataModule(config.data)
    module = build_module(config, datamodule)
    monitor = ThroughputMonitor(skip_steps=warmup_steps)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=1, precision=resolve_precision(t.precision),
        max_steps=warmup_steps + steps, max_epochs=-1, limit_val_batches=0,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches, callbacks=[monitor], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return {
        "family": config.family, "steps": steps, "warmup_steps": warmup_steps,
        "parameters": sum(p.numel() for p in module.parameters()),
        **monitor.summary(module.device),
        "device": str(module.device), "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }


def cmd_bench_train(argv: list[str]) -> int:
    """``nargen bench train RECIPE.yaml [--steps N] [--warmup-steps W] [--section.key VALUE ...]``."""
    parser = argparse.ArgumentParser(
        prog="nargen bench train",
        description="Training target tokens/s of a recipe over N updates after W warm-up "
                    "updates (fit's training step; no validation, checkpoints or logs). "
                    "Other arguments are recipe overrides, as for nargen fit.",
    )
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/multi30k/ar_tiny.yaml")
    parser.add_argument("--steps", type=int, default=60, help="updates timed")
    parser.add_argument("--warmup-steps", type=int, default=10, help="updates run first, not timed")
    args, overrides = parser.parse_known_args(argv)
    config, _ = parse_fit_args(["--config", args.recipe, *overrides])
    result = train_throughput(config, args.steps, args.warmup_steps)
    print(json.dumps(result), file=sys.stdout)
    return 0
