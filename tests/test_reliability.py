"""Non-finite loss guard and atomic checkpoint writes."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nargen.core import TransformerConfig
from nargen.data import DataConfig, TranslationDataModule
from nargen.models import AutoregressiveModule, NonFiniteTrainingError, OptimConfig
from nargen.training.checkpoints import AtomicCheckpointIO


class FlakyModule(AutoregressiveModule):
    """Returns a NaN loss at chosen steps and records the weights around each step."""

    def __init__(self, *args, nan_steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_steps = set(nan_steps)
        self.snapshots: dict[int, torch.Tensor] = {}

    def loss(self, batch):
        loss = super().loss(batch)
        return loss * float("nan") if self.global_step in self.nan_steps else loss

    def on_train_batch_start(self, batch, batch_idx):
        self.snapshots[self.global_step] = self.model.embed.weight.detach().clone()


def train(reversal_root, tmp_path, nan_steps, steps, max_bad=10):
    data = TranslationDataModule(DataConfig(
        corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
        vocab_size=36, cache_dir=str(tmp_path / "c"), max_tokens=600))
    tokenizer = data.tokenizer
    module = FlakyModule(
        TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size), tokenizer,
        OptimConfig(lr=1e-3, warmup_steps=1, max_nonfinite_steps=max_bad), nan_steps=nan_steps)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    return module, trainer, data


def test_nonfinite_steps_are_skipped_and_counted(reversal_root, tmp_path):
    module, trainer, data = train(reversal_root, tmp_path, nan_steps={2, 3}, steps=6)
    trainer.fit(module, datamodule=data)
    assert module.skipped_steps == 2
    assert torch.isfinite(module.model.embed.weight).all()
    snaps = module.snapshots
    # the NaN batches at steps 2 and 3 changed nothing; normal steps did
    assert torch.equal(snaps[2], snaps[3]) and not torch.equal(snaps[1], snaps[2])


def test_consecutive_nonfinite_steps_stop_training_naming_the_step(reversal_root, tmp_path):
    module, trainer, data = train(reversal_root, tmp_path, nan_steps=set(range(3, 20)), steps=20, max_bad=4)
    with pytest.raises(NonFiniteTrainingError, match=r"training stopped at step 6: 4 consecutive steps \(3 to 6\)"):
        trainer.fit(module, datamodule=data)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(reversal_root, tmp_path):
    """Kill `nargen fit` with SIGKILL after its first checkpoint, rerun the same command:
    it resumes from last.ckpt and ends with exactly the weights of a run never killed."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import assert_same_weights, reversal_config, reversal_overrides
    from nargen.training.fit import run_fit
    from nargen.models import read_checkpoint

    extra = ("--model", "{preset: micro, dropout: 0.1}", "--trainer.checkpoint_every_steps", "10",
             "--trainer.log_every_n_steps", "2")
    cache = tmp_path / "cache"
    steps = 60  # about 2.5 epochs of 1200-token batches
    run_fit(reversal_config(reversal_root, tmp_path / "whole", cache, steps, *extra))

    killed = tmp_path / "killed"
    args = reversal_overrides(reversal_root, killed, cache, steps, *extra)
    proc = subprocess.Popen([sys.executable, "-m", "nargen.cli.main", "fit", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = read_checkpoint(last)["global_step"]
    assert 0 < step_at_kill < steps
    first_attempt = killed / "logs" / "version_0" / "metrics.csv"
    logged = first_attempt.read_text()
    assert len(logged.splitlines()) > 1  # rows were logged before the kill

    summary = run_fit(reversal_config(reversal_root, killed, cache, steps, *extra))
    assert summary["steps"] == steps
    assert_same_weights(tmp_path / "whole" / "checkpoints" / "last.ckpt", last)
    assert first_attempt.read_text() == logged  # the resume kept them
    assert (killed / "logs" / "version_1" / "metrics.csv").is_file()  # and logged its own


def test_last_checkpoint_holds_the_final_step_and_a_rerun_trains_no_further(reversal_root, tmp_path):
    """A run that stops between two periodic saves (13 updates, a save every 10) still
    leaves last.ckpt at its final update, and rerunning it resumes there: no update
    is trained twice and the weights stay as they were."""
    from conftest import reversal_config
    from nargen.training.fit import run_fit
    from nargen.models import read_checkpoint

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    extra = ("--trainer.checkpoint_every_steps", "10")
    assert run_fit(reversal_config(reversal_root, run_dir, cache, 13, *extra))["steps"] == 13
    last = run_dir / "checkpoints" / "last.ckpt"
    first = read_checkpoint(last)
    assert first["global_step"] == 13

    again = run_fit(reversal_config(reversal_root, run_dir, cache, 13, *extra))
    assert again["steps"] == 13 and again["target_tokens"] == 0
    second = read_checkpoint(last)
    assert second["global_step"] == 13
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
