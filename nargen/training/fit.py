"""``nargen fit``: train a recipe, keep the best checkpoint (or average the best few),
report test BLEU."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from nargen.config import ConfigError
from nargen.training.recipe import FitConfig, TrainerConfig, to_dict
from nargen.training.run_history import check_resume, move_aside
from nargen.core import TransformerConfig
from nargen.data import TranslationDataModule
from nargen.data.corpora import read_split
from nargen.evaluation import evaluate
from nargen.models import Seq2SeqModule, family_class, load_module
from nargen.training.checkpoints import AtomicCheckpointIO, init_core_from
from nargen.training.averaging import average_checkpoints
from nargen.training.final_validation import ValidateAtMaxSteps
from nargen.training.precision import precision_settings
from nargen.training.resume import ResumeState
from nargen.training.throughput import ThroughputMonitor


def build_module(config: FitConfig, datamodule: TranslationDataModule) -> Seq2SeqModule:
    """The family's module at the recipe's size, with the corpus's tokenizer."""
    model_values = dict(config.model)
    preset = model_values.pop("preset", "tiny")
    tokenizer = datamodule.tokenizer
    model_config = TransformerConfig.from_preset(
        preset, **{**model_values, "vocab_size": tokenizer.vocab_size}
    )
    return family_class(config.family)(
        model_config, tokenizer, config.optim, config.decode, datamodule.signature(),
        config.family_options,
    )


def set_threads(t: TrainerConfig) -> None:
    """``trainer.threads`` for torch in this process and in the processes a DDP launch
    starts (through ``OMP_NUM_THREADS``, which Lightning then leaves alone)."""
    if t.threads:
        torch.set_num_threads(t.threads)
        os.environ["OMP_NUM_THREADS"] = str(t.threads)


def close_process_group() -> None:
    """End a multi-process run's process group on every rank once training is over: a
    gloo group left to the interpreter's exit can abort the process ("terminate called
    without an active exception") after the run itself succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def max_epochs(t: TrainerConfig) -> int | None:
    """No epoch limit when steps or time bound the run (Lightning would stop at 1000)."""
    if t.max_epochs is not None:
        return t.max_epochs
    return -1 if t.max_steps > 0 or t.max_time_minutes else None


class TopCheckpoints(ModelCheckpoint):
    """The k best checkpoints by the family's selection metric (validation BLEU), beside
    ``best.ckpt`` (which watches the same metric): a state key of its own, so both resume."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, kept="top-k")


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N updates and once more when training ends, so that it holds
    the final state even when the run stops between two saves (``max_steps`` not a
    multiple of N, or ``max_time``): rerunning a finished run then resumes at its end.
    Lightning's own end-of-training save is skipped once any ``last.ckpt`` was written."""

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def loggers(run_dir: Path, tensorboard: bool) -> list[Logger]:
    """CSV metrics in ``RUN_DIR/logs/version_N`` (a new version per attempt: nothing is
    overwritten), and optionally TensorBoard event files in ``RUN_DIR/tensorboard``."""
    out: list[Logger] = [CSVLogger(run_dir, name="logs")]
    if tensorboard:
        out.append(TensorBoardLogger(run_dir, name="tensorboard"))
    return out


def make_trainer(config: FitConfig, run_dir: Path, monitor: ThroughputMonitor) -> L.Trainer:
    t = config.trainer
    checkpoints = run_dir / "checkpoints"
    metric = family_class(config.family).selection_metric  # val_bleu but for draft heads
    best = ModelCheckpoint(
        dirpath=checkpoints, filename="best", monitor=metric, mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    last = LastCheckpoint(
        dirpath=checkpoints, save_top_k=0, save_last=True,
        every_n_train_steps=t.checkpoint_every_steps, enable_version_counter=False,
    )
    callbacks = [best, last, monitor, ResumeState(), ValidateAtMaxSteps()]
    if t.keep_last:
        callbacks.append(ModelCheckpoint(
            dirpath=checkpoints, filename="step-{step}", monitor="step", mode="max",
            save_top_k=t.keep_last, every_n_train_steps=t.checkpoint_every_steps,
            auto_insert_metric_name=False, enable_version_counter=False,
        ))
    if t.keep_best:
        callbacks.append(TopCheckpoints(
            dirpath=checkpoints, filename=f"top-step={{step}}-{metric.removeprefix('val_')}={{{metric}:.2f}}",
            monitor=metric, mode="max", save_top_k=t.keep_best, auto_insert_metric_name=False,
            enable_version_counter=False,
        ))
    precision, precision_plugins = precision_settings(t.precision, t.accelerator)
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=precision,
        max_steps=t.max_steps,
        max_epochs=max_epochs(t),
        max_time={"minutes": t.max_time_minutes} if t.max_time_minutes else None,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *precision_plugins],
        logger=loggers(run_dir, t.tensorboard),
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        num_sanity_val_steps=0,
        val_check_interval=t.val_every_steps,
        check_val_every_n_epoch=None if t.val_every_steps else 1,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )


def run_fit(config: FitConfig) -> dict[str, Any] | None:
    """Train (resuming from ``run_dir/checkpoints/last.ckpt`` when it exists), then
    evaluate the best checkpoint on the test split. Returns the summary (on the main
    process; other ranks of a multi-process run return None)."""
    started, started_unix = time.perf_counter(), time.time()
    t = config.trainer
    if family_class(config.family).needs_init_from and not t.init_from:
        raise ConfigError(f"family {config.family!r} trains on top of a trained model: set trainer.init_from")
    set_threads(t)
    L.seed_everything(t.seed, workers=True, verbose=False)
    run_dir = Path(t.run_dir)
    resolved = to_dict(config)
    if t.fresh and (moved := move_aside(run_dir)) is not None:
        print(f"nargen fit: moved the previous run to {moved}", file=sys.stderr)
    resume = run_dir / "checkpoints" / "last.ckpt"
    if resume.is_file():
        check_resume(run_dir, resolved, t.allow_config_change)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").is_file():
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    datamodule = TranslationDataModule(config.data)
    module = build_module(config, datamodule)
    datamodule.max_len = min(datamodule.max_len, module.model_config.max_len)
    if t.init_from and not resume.is_file():
        copied = init_core_from(module, t.init_from)
        print(f"nargen fit: {copied} core parameter tensors from {t.init_from}", file=sys.stderr)
    if t.compile:
        module.compile_loss()
    monitor = ThroughputMonitor()
    trainer = make_trainer(config, run_dir, monitor)
    if trainer.is_global_zero:  # this attempt's own recipe, beside its metrics
        trainer.logger.experiment  # creates the version folder
        (Path(trainer.logger.log_dir) / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume if resume.is_file() else None)
    monitor.gather(trainer)
    close_process_group()
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        **monitor.summary(trainer.strategy.root_device),
    }
    if monitor.first_update_unix is not None:  # imports, data prepared or opened, model built, one update
        age = monitor.process_age_at_first_update
        summary["seconds_to_first_update"] = round(age if age is not None else monitor.first_update_unix - started_unix, 1)
    if not trainer.is_global_zero:
        return None
    if trainer.world_size > 1:
        summary["processes"] = trainer.world_size
    best = run_dir / "checkpoints" / "best.ckpt"
    summary["best_checkpoint"] = str(best)
    if config.eval.average_best and (top := best_checkpoints(trainer, config.eval.average_best)):
        best = average_checkpoints(top, run_dir / "checkpoints" / "averaged.ckpt")
        summary["averaged_checkpoints"] = [str(run_dir / "checkpoints" / p.name) for p in top]  # as best.ckpt is named
        summary["tested_checkpoint"] = str(best)
    if best.is_file() and config.eval.decodes and config.data.test_split:
        summary["test"] = evaluate_test(config, best)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def best_checkpoints(trainer: L.Trainer, n: int) -> list[Path]:
    """The (at most) ``n`` kept checkpoints with the highest selection metric, best first."""
    top = next((c for c in trainer.callbacks if isinstance(c, TopCheckpoints)), None)
    if top is None:
        return []
    ranked = sorted(top.best_k_models.items(), key=lambda item: float(item[1]), reverse=True)
    return [Path(path) for path, _ in ranked[:n] if Path(path).is_file()]


def evaluate_test(config: FitConfig, checkpoint: Path) -> list[dict[str, Any]]:
    """Score ``checkpoint`` on the recipe's test split for each setting in ``eval.decodes``."""
    d = config.data
    test = read_split(d.resolved_root(), d.test_split, d.src_lang, d.tgt_lang)
    module = load_module(checkpoint, map_location="cuda" if torch.cuda.is_available() else "cpu")
    records = []
    for options in config.eval.decodes:
        record, _ = evaluate(
            module, test.source, test.target, latency_sentences=config.eval.latency_sentences,
            **options,
        )
        record["split"] = d.test_split
        records.append(record)
    return records
