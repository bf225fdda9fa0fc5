"""``nargen bench train``: training throughput of a recipe over a fixed number of updates
after a warm-up, with the same training step as ``nargen fit`` (model, loss, optimizer,
clipping, precision) but no validation, checkpoints or logs."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass

import lightning as L
import torch

from nargen.training.recipe import FitConfig, parse_fit_args
from nargen.training.fit import build_module, close_process_group, set_threads
from nargen.data import TranslationDataModule
from nargen.training.precision import precision_settings
from nargen.training.throughput import ThroughputMonitor
from nargen.bench.profiling import (
    NARGEN_REGIONS, REGION, StepProfile, add_counts, attention_elements, label_regions, summarize,
)


class StepProfiler(L.Callback):
    """Profiles ``steps`` training steps after ``skip_steps`` with ``torch.profiler``:
    whole steps (batch fetch, forward, loss, backward, clipping, optimizer, hooks),
    grouped by ``nargen.bench.profiling``."""

    def __init__(self, skip_steps: int, steps: int, monitor: ThroughputMonitor) -> None:
        self.skip_steps, self.steps, self.monitor = skip_steps, steps, monitor
        self.result: StepProfile | None = None
        self.counted = (0, 0.0)
        """The monitor's tokens and seconds before the profile (profiling slows steps)."""
        self._profiler: torch.profiler.profile | None = None
        self._started = 0.0
        self._unlabel = None
        self._attention: dict[str, float] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        step = trainer.global_step
        if self._profiler is not None and self.result is None and "tgt_in" in batch:
            add_counts(self._attention, attention_elements(batch["src"].shape, batch["tgt_in"].shape))
        if step == self.skip_steps and self._profiler is None and self.steps:
            self.counted = self.monitor.counted()
            self._unlabel = label_regions(module.model, NARGEN_REGIONS)
            step_fn = type(module).training_step

            def labelled_step(*args, **kwargs):  # noqa: ANN002, ANN003
                with torch.autograd.profiler.record_function(REGION + "step"):
                    return step_fn(module, *args, **kwargs)

            module.training_step = labelled_step
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profiler.__enter__()
            self._started = time.perf_counter()
        elif step == self.skip_steps + self.steps and self._profiler is not None and self.result is None:
            wall = time.perf_counter() - self._started
            self._profiler.__exit__(None, None, None)
            del module.training_step
            self._unlabel()
            self.result = summarize(self._profiler.events(), self.steps, wall)
            self.result.tokens = (self.monitor.counted()[0] - self.counted[0]) / self.steps
            self.result.attention = {k: v / self.steps for k, v in self._attention.items()}


def train_throughput(config: FitConfig, steps: int, warmup_steps: int,
                     profile_steps: int = 0) -> dict | None:
    """Train ``warmup_steps + steps`` updates of ``config`` from scratch; target tokens/s
    (padding excluded) over the last ``steps``, summed over the processes of a
    multi-process run (``trainer.devices`` > 1, ``trainer.strategy: ddp``; None on the
    worker processes). With ``profile_steps``, that many more steps are then profiled
    (``profile``: ms per step by operator group)."""
    t = config.trainer
    set_threads(t)
    L.seed_everything(t.seed, workers=True, verbose=False)
    datamodule = TranslationDataModule(config.data)
    module = build_module(config, datamodule)
    monitor = ThroughputMonitor(skip_steps=warmup_steps)
    profiler = StepProfiler(warmup_steps + steps, profile_steps, monitor)
    precision, precision_plugins = precision_settings(t.precision, t.accelerator)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=precision, plugins=precision_plugins,
        max_steps=warmup_steps + steps + profile_steps, max_epochs=-1, limit_val_batches=0,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches, callbacks=[monitor, profiler], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    if profile_steps:  # the throughput counted only the steps before the profile
        monitor.counted()  # fold what the device still holds, then drop the profiled steps
        monitor.target_tokens, monitor.seconds = profiler.counted
    monitor.gather(trainer)
    close_process_group()
    if not trainer.is_global_zero:
        return None
    out = {
        "family": config.family, "steps": steps, "warmup_steps": warmup_steps,
        "parameters": sum(p.numel() for p in module.parameters()),
        **monitor.summary(trainer.strategy.root_device),
        "device": str(module.device), "processes": trainer.world_size,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    if profiler.result is not None:
        out["profile"] = {"ms_per_step": round(profiler.result.wall_ms, 1), "steps": profile_steps,
                          "target_tokens_per_step": round(profiler.result.tokens, 1),
                          "attention_elements_per_step": profiler.result.attention,
                          "groups": profiler.result.rows(),
                          "markdown": profiler.result.markdown(f"nargen {config.family}")}
    return out


@dataclass
class BenchTrainSettings:
    """How many updates are timed (training target tokens/s of the recipe over
    ``steps`` updates after ``warmup_steps``; fit's training step, without validation,
    checkpoints or logs)."""

    steps: int = 60
    """Updates timed."""
    warmup_steps: int = 10
    """Updates run first, not timed."""
    profile_steps: int = 0
    """Then profile this many more updates with torch.profiler and print where their
    time went, by operator group (to stderr; 'profile' in the JSON)."""


def cmd_bench_train(argv: list[str]) -> int:
    """``nargen bench train RECIPE.yaml [--steps N] [--warmup_steps W] [--section.key VALUE ...]``:
    the recipe's keys as for nargen fit, and ``BenchTrainSettings``."""
    config, _, b = parse_fit_args(argv, extra=BenchTrainSettings)
    result = train_throughput(config, b.steps, b.warmup_steps, b.profile_steps)
    if result is None:  # a worker process of a multi-process run
        return 0
    if "profile" in result:
        print(result["profile"]["markdown"], file=sys.stderr)
    print(json.dumps(result), file=sys.stdout)
    return 0
