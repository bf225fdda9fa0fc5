"""Starting a model's transformer core from another checkpoint (``trainer.init_from``)."""

from __future__ import annotations

import shutil

import pytest
import torch

from nargen.training.fit import run_fit
from nargen.core import TransformerConfig
from nargen.data import train_tokenizer
from nargen.models import FAMILIES, CheckpointError, load_module, read_checkpoint
from nargen.training.checkpoints import init_core_from

from conftest import reversal_config, reversal_pairs


def student(family: str, teacher, **model):
    """A fresh module of ``family`` with the teacher's tokenizer (and sizes unless changed)."""
    config = TransformerConfig.from_dict({**teacher.model_config.to_dict(), **model})
    return FAMILIES[family](config, teacher.tokenizer)


@pytest.mark.parametrize("family", ["ctc", "dag", "cmlm"])
def test_core_is_copied_and_the_family_own_parameters_stay_fresh(trained_run, family):
    path = trained_run / "checkpoints" / "best.ckpt"
    teacher = load_module(path, map_location="cpu")
    torch.manual_seed(3)
    module = student(family, teacher, absolute_positions=True)
    fresh = {k: v.clone() for k, v in module.state_dict().items()}
    copied = init_core_from(module, path)

    core = dict(teacher.model.named_parameters())
    assert copied == len(core)
    for name, p in module.model.named_parameters():
        assert torch.equal(p, core[name]), name
        assert not torch.equal(p, fresh[f"model.{name}"]), name  # it did change
    own = [k for k in fresh if not k.startswith("model.")]
    assert own or family == "ctc"  # ctc has no parameters of its own
    for name in own:
        assert torch.equal(module.state_dict()[name], fresh[name]), name


def test_a_different_tokenizer_or_size_is_refused_naming_the_checkpoint(trained_run, tmp_path):
    path = trained_run / "checkpoints" / "best.ckpt"
    teacher = load_module(path, map_location="cpu")
    with pytest.raises(CheckpointError, match=r"best\.ckpt: its transformer core differs .* decoder_layers"):
        init_core_from(student("ctc", teacher, decoder_layers=teacher.model_config.decoder_layers + 1), path)

    src, tgt = reversal_pairs(500, 9)
    other = train_tokenizer([s.upper() for s in src + tgt], teacher.tokenizer.vocab_size, tmp_path)
    module = FAMILIES["ctc"](teacher.model_config, other)
    with pytest.raises(CheckpointError, match=r"best\.ckpt: its tokenizer differs"):
        init_core_from(module, path)


def test_fit_starts_from_the_checkpoint_and_a_resumed_run_ignores_it(trained_run, reversal_root, tmp_path):
    path = tmp_path / "teacher.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", path)
    teacher = read_checkpoint(path)["state_dict"]
    run_dir = tmp_path / "student"
    # One update at a learning rate too small to move the weights: the checkpoint holds the teacher's core.
    config = reversal_config(reversal_root, run_dir, tmp_path / "c", 1, "--family", "ctc",
                             "--model.absolute_positions", "true", "--trainer.init_from", str(path),
                             "--optim.lr", "1e-9")
    run_fit(config)
    saved = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for name, value in teacher.items():
        if name.startswith("model.") and value.is_floating_point():
            assert torch.allclose(saved[name], value, atol=1e-6), name

    # Resuming reads last.ckpt, never init_from (gone now: reading it would fail).
    path.unlink()
    config.trainer.max_steps = 2
    assert run_fit(config)["steps"] == 2
    # ... so a resume may name another start (or none) without being refused as a changed recipe.
    config.trainer.init_from = str(tmp_path / "elsewhere.ckpt")
    config.trainer.max_steps = 3
    assert run_fit(config)["steps"] == 3
