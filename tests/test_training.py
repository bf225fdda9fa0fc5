"""Learning a tiny task through the same LightningModule and `fit` users run; checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nargen.cli.fit import run_fit
from nargen.models import AutoregressiveModule, CheckpointError, load_module, read_checkpoint
from nargen.data import read_split

from conftest import reversal_config


def exact_match(module, sources, references, **options) -> float:
    outputs = module.translate(sources, **options).texts
    return sum(o == r for o, r in zip(outputs, references)) / len(references)


def test_autoregressive_model_learns_to_reverse(trained_run, reversal_root):
    test = read_split(reversal_root, "test", "src", "tgt")
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    assert exact_match(module, test.source, test.target) >= 0.9
    assert exact_match(module, test.source, test.target, beam=4) >= 0.9


def test_checkpoint_is_self_contained_and_loads_weights_only(trained_run, tmp_path):
    moved = tmp_path / "elsewhere.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", moved)
    state = torch.load(moved, map_location="cpu", weights_only=True)
    meta = state["nargen"]
    assert meta["family"] == "autoregressive"
    assert meta["special_ids"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "mask": 4, "blank": 5}
    assert meta["data_signature"]["pairs"] == 3000
    module = load_module(moved)
    assert isinstance(module, AutoregressiveModule)
    assert module.translate(["ka lo mi"]).texts == ["mi lo ka"]


def test_run_dir_holds_config_and_last_checkpoint(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert read_checkpoint(trained_run / "checkpoints" / "last.ckpt")["global_step"] == 400


def test_translate_keeps_one_output_per_input(trained_run):
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    inputs = ["ka lo", "", "   ", " ".join(["mi"] * 200), "za"]
    result = module.translate(inputs)
    assert len(result.texts) == len(inputs)
    assert result.texts[1] == "" and result.texts[2] == ""
    assert result.truncated == [3]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_module(tmp_path / "nope.ckpt")


def test_truncated_checkpoint_is_a_clear_error(trained_run, tmp_path):
    data = (trained_run / "checkpoints" / "best.ckpt").read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="broken.ckpt: not a readable checkpoint"):
        load_module(broken)


def test_checkpoint_of_another_family_is_refused(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="is a 'autoregressive' checkpoint, expected 'cmlm'"):
        load_module(trained_run / "checkpoints" / "best.ckpt", family="cmlm")
    state = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    state["nargen"]["family"] = "insertion"
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="family 'insertion' is not provided"):
        load_module(other)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    torch.save({"nargen": Payload(), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        load_module(path)


def test_training_resumes_from_last_checkpoint(reversal_root, tmp_path):
    cache = tmp_path / "cache"
    run_dir = tmp_path / "run"
    run_fit(reversal_config(reversal_root, run_dir, cache, 50))
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 50
    summary = run_fit(reversal_config(reversal_root, run_dir, cache, 60))
    assert summary["steps"] == 60
    assert summary["target_tokens"] < 20 * 1200  # only the 10 new steps were trained
