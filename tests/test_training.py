"""Learning a tiny task through the same LightningModule and `fit` users run; checkpoints."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from nargen.training.fit import run_fit
from nargen.core import TransformerConfig
from nargen.models import (
    FAMILIES, AutoregressiveModule, CheckpointError, DecodeConfig, load_module, read_checkpoint,
)
from nargen.data import read_split

from conftest import reversal_config


def exact_match(module, sources, references, **options) -> float:
    outputs = module.translate(sources, **options).texts
    return sum(o == r for o, r in zip(outputs, references)) / len(references)


def test_autoregressive_model_learns_to_reverse(trained_run, reversal_root):
    test = read_split(reversal_root, "test", "src", "tgt")
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    # measured 0.88-0.94 (greedy and beam 4) over data seeds 1-4, i.e. batch orders
    assert exact_match(module, test.source, test.target) >= 0.8
    assert exact_match(module, test.source, test.target, beam=4) >= 0.8


@torch.no_grad()
def test_autoregressive_validation_logs_its_loss_and_exact_likelihood_from_one_pass(trained_run, reversal_root):
    import torch.nn.functional as F

    from nargen.data.datamodule import collate_pairs

    module = load_module(trained_run / "checkpoints" / "best.ckpt").eval()
    test = read_split(reversal_root, "test", "src", "tgt")
    items = [(i, torch.tensor(module.source_ids([s])[0]), torch.tensor(module.tokenizer.encode([t])[0]))
             for i, (s, t) in enumerate(zip(test.source[:8], test.target[:8]))]
    batch = {k: v.to(module.device) for k, v in collate_pairs(items).items()}  # a GPU's, where one is present
    metrics = module.validation_metrics(batch)
    logits = module.model(batch["src"], batch["tgt_in"]).float()
    real = batch["tgt_out"] != module.ids.pad
    nll = F.cross_entropy(logits[real], batch["tgt_out"][real])
    assert metrics["val_nll"][1] == int(real.sum())  # weighted by tokens, EOS counted
    assert torch.allclose(metrics["val_nll"][0], nll, atol=1e-4)
    assert torch.allclose(metrics["val_loss"][0], module.loss(batch), atol=1e-5)
    assert metrics["val_loss"][1] == len(items)


def train_losses(run_dir) -> dict[int, float]:
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(handle) if r["train_loss"]}


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu_trains_like_fp32_with_clipping(trained_run, reversal_root, tmp_path):
    """bf16 autocast on the CPU (what ``precision: auto`` picks on CPUs with native bf16)
    with the fused optimizer and gradient clipping: the weights stay fp32, and the
    training loss follows the fp32 run of the same recipe, seed and batches
    (``trained_run``) step for step while it falls (measured: within 0.5%; 5% allowed)."""
    run_dir = tmp_path / "bf16"
    summary = run_fit(reversal_config(reversal_root, run_dir, tmp_path / "c", 150,
                                      "--trainer.precision", "bf16-mixed"))
    assert summary["steps"] == 150
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    assert all(p.dtype == torch.float32 for p in module.parameters())
    bf16, fp32 = train_losses(run_dir), train_losses(trained_run)
    assert sorted(bf16) == [49, 99, 149]
    for step, loss in bf16.items():
        assert abs(loss - fp32[step]) <= 0.05 * fp32[step], (step, loss, fp32[step])
    assert bf16[149] < 0.5 * bf16[49]  # it learns: 2.26 -> 0.52 and 2.17 -> 0.80 measured (two batch orders)


def test_auto_precision_is_bf16_mixed_exactly_where_the_cpu_has_native_bf16(monkeypatch):
    from nargen.training import precision

    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        resolved, plugins = precision.precision_settings("auto", "cpu")
        if native:
            assert resolved is None and isinstance(plugins[0], precision.BF16MixedPrecision)
        else:
            assert (resolved, plugins) == ("32-true", [])
    assert precision.precision_settings("32-true", "cpu") == ("32-true", [])


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
    state["nargen"]["family"] = "no_such_family"
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="unknown family 'no_such_family'"):
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


@pytest.mark.parametrize("family, options, model, decode", [
    ("autoregressive", {}, {"n_kv_heads": 1}, {"options": {"beam": 3, "length_penalty": 0.8}}),
    ("nat", {"decoder_input": "copy", "length_loss_weight": 0.3, "max_length_offset": 16},
     {"absolute_positions": True}, {"options": {"length_beam": 3}}),
    ("nat", {"decoder_input": "mask"}, {"share_decoder_kv": True}, {}),
    ("cmlm", {"max_length_offset": 8}, {"absolute_positions": True, "n_kv_heads": 1},
     {"options": {"iterations": 6}, "validation": {"iterations": 2}}),
])
def test_checkpoint_round_trip_keeps_options_and_logits(family, options, model, decode, tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, **model)
    module = FAMILIES[family](cfg, tokenizer, decode=DecodeConfig(**decode), family_options=options).eval()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # the hook Lightning calls when it saves
    torch.save(checkpoint, tmp_path / "m.ckpt")
    loaded = load_module(tmp_path / "m.ckpt", family=family, map_location="cpu")  # built afresh: other random weights
    assert loaded.options == module.options
    assert loaded.model_config == cfg and loaded.decode_config == module.decode_config
    src = torch.randint(6, tokenizer.vocab_size, (3, 7))
    src[1, 4:] = 0
    tgt = torch.randint(6, tokenizer.vocab_size, (3, 5))
    with torch.inference_mode():
        if family == "autoregressive":
            assert torch.equal(module.model(src, tgt), loaded.model(src, tgt))
        else:
            real = torch.ones_like(tgt, dtype=torch.bool)
            enc_a, enc_b = module.encode(src), loaded.encode(src)
            assert torch.equal(module.decode_parallel(tgt, enc_a, real), loaded.decode_parallel(tgt, enc_b, real))
            assert torch.equal(module.predict_lengths(enc_a, (src != 0).sum(1), 3)[0],
                               loaded.predict_lengths(enc_b, (src != 0).sum(1), 3)[0])
            assert torch.equal(module.length_predictor(enc_a.memory, enc_a.mask),
                               loaded.length_predictor(enc_b.memory, enc_b.mask))
    assert module.generate(src).as_lists(0) == loaded.generate(src).as_lists(0)


def test_the_final_step_is_validated_when_max_steps_ends_inside_an_epoch(reversal_root, tmp_path):
    """Validation once an epoch (val_every_steps unset); 30 steps end inside the second
    epoch, and those final weights must still be validated and saved as best."""
    from conftest import reversal_overrides
    from nargen.training.recipe import load_fit_config

    args = reversal_overrides(reversal_root, tmp_path / "run", tmp_path / "c", 30)
    i = args.index("--trainer.val_every_steps")
    del args[i : i + 2]
    config = load_fit_config(None, args)
    assert config.trainer.val_every_steps is None
    summary = run_fit(config)
    assert summary["steps"] == 30 and summary["epochs"] >= 1  # ended inside a later epoch
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "version_0" / "metrics.csv").open()))
    validated = sorted({int(r["step"]) + 1 for r in rows if r.get("val_bleu")})
    assert validated[-1] == 30 and len(validated) == 2  # the epoch end (17) and the last step


def test_the_final_step_is_validated_when_max_epochs_ends_between_validations(reversal_root, tmp_path):
    """Validation every 10 steps; one epoch ends at a step that is no multiple of 10,
    and those final weights must still be validated."""
    from conftest import reversal_overrides
    from nargen.training.recipe import load_fit_config

    args = reversal_overrides(reversal_root, tmp_path / "run", tmp_path / "c", 1000,
                              "--trainer.max_epochs", "1")
    args[args.index("--trainer.val_every_steps") + 1] = "10"
    summary = run_fit(load_fit_config(None, args))
    assert summary["steps"] % 10, "the epoch must end between two validations"
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "version_0" / "metrics.csv").open()))
    validated = sorted({int(r["step"]) + 1 for r in rows if r.get("val_bleu")})
    assert validated[-1] == summary["steps"]
    assert validated[:-1] == list(range(10, summary["steps"], 10))
