"""``nargen diagnose`` on trained reversal models: oracle length, order policies, the
learned order, insertion passes; and the oracle-order properties on a real decoder."""

from __future__ import annotations

import math

import json

import pytest
import torch

from nargen.cli.main import main
from nargen.data import read_split
from nargen.decoding import mask_predict
from nargen.orderings.commitment import oracle_all
from nargen.diagnose import Batch, decode_all, diagnose, make_batches, run_with, scored
from nargen.models import load_module
from conftest import train_parallel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cmlm(trained_cmlm):
    return load_module(trained_cmlm, family="cmlm")


@pytest.fixture(scope="module")
def undertrained_cmlm(reversal_root, tmp_path_factory):
    """A CMLM stopped early, so one pass leaves many tokens wrong even at the right length."""
    return load_module(train_parallel(reversal_root, tmp_path_factory, "cmlm", steps=100), family="cmlm")


@pytest.fixture(scope="module")
def test_split(reversal_root):
    return read_split(reversal_root, "test", "src", "tgt")


def test_reference_lengths_are_the_output_lengths(cmlm, test_split):
    batches = make_batches(cmlm, test_split.source[:30], test_split.target[:30], max_tokens=200)
    assert len(batches) > 1
    for batch in batches:
        result = mask_predict(cmlm, batch.src, iterations=2, lengths=batch.ref_lengths,
                              **cmlm.mask_predict_settings())
        assert torch.equal((result.tokens != cmlm.ids.pad).sum(1), batch.ref_lengths)


def test_keeping_every_right_token_never_loses_one_and_bleu_grows_with_iterations(
    undertrained_cmlm, test_split
):
    """With the oracle that keeps every right token (and masks every wrong one), each
    extra iteration keeps all that were right, so the right positions only grow, and
    BLEU with them on this task."""
    cmlm = undertrained_cmlm
    src, ref = test_split.source, test_split.target
    batches = make_batches(cmlm, src, ref, max_tokens=400)
    settings = cmlm.mask_predict_settings()
    previous_right, bleus = None, []
    for t in (1, 2, 3, 4):
        decoded = run_with(cmlm, batches, settings, t,
                           lambda b: {"lengths": b.ref_lengths, "remask": oracle_all(b.ref)})
        right = set()
        for batch in batches:
            for row, i in enumerate(batch.rows):
                n = int(batch.ref_lengths[row])
                right |= {(i, p) for p in range(n) if decoded.tokens[i][p] == int(batch.ref[row, p])}
        if previous_right is not None:
            assert previous_right <= right
        previous_right = right
        bleus.append(scored(cmlm, decoded, ref)["bleu"])
    assert bleus == sorted(bleus), bleus
    assert bleus[0] < 90 and bleus[-1] > bleus[0], bleus


def test_cmlm_report_has_every_setting_and_orders_in_range(cmlm, test_split, trained_run):
    teacher = load_module(trained_run / "checkpoints" / "best.ckpt")
    report = diagnose(cmlm, test_split.source[:40], test_split.target[:40], teacher=teacher,
                      iterations=(1, 2, 4), max_tokens=300)
    lengths = {(r["length"], r["iterations"]) for r in report["length"]}
    assert lengths == {(label, t) for t in (1, 2, 4)
                       for label in ("predicted, beam 1", "predicted, beam 5", "reference")}
    orders = {(r["policy"], r["iterations"]) for r in report["order"]}
    assert orders == {(p, t) for t in (1, 2, 4) for p in
                      ("confidence", "random", "left_to_right", "easiest_first", "oracle", "oracle_all")}
    at_one = {r["policy"]: r["bleu"] for r in report["order"] if r["iterations"] == 1}
    assert len(set(at_one.values())) == 1  # one pass: no order to choose, all policies agree
    (learned,) = report["learned_order"]
    assert learned["sentences"] > 30 and learned["tau_left_to_right"] is not None


def test_learned_order_is_the_mean_tau_against_each_reference_order():
    from nargen.diagnose import Decoded, learned_order

    schedules = [
        [0, 1, 2, 3, 4],  # left to right
        [4, 3, 2, 1, 0],  # right to left
        [2, 1, 0, 2, 1],  # the balanced tree of 5: the middle, then 1 and 4, then 0 and 3
        [0, 0, 0],  # all at once: no order, left out
        [0],  # one position: left out
    ]
    got = learned_order(Decoded(tokens=[[]] * 5, schedules=schedules, passes=[1] * 5))
    assert got["sentences"] == 3
    # tree against left to right: 3 concordant, 5 discordant pairs, 2 tied in the tree:
    # tau-b = (3 - 5) / sqrt((10 - 2) * 10); left to right and its mirror give 1 and -1
    tree_vs_l2r = -2 / math.sqrt(80)
    assert got["tau_left_to_right"] == pytest.approx((1 - 1 + tree_vs_l2r) / 3, abs=1e-3)
    # against the tree: the tree itself scores 1; left to right and its mirror cancel
    assert got["tau_balanced_tree"] == pytest.approx((tree_vs_l2r - tree_vs_l2r + 1) / 3, abs=1e-3)


def test_sequential_insertion_takes_one_pass_per_token_plus_one(trained_insertion, test_split):
    module = load_module(trained_insertion, family="insertion")
    report = diagnose(module, test_split.source[:40], test_split.target[:40], max_tokens=300,
                      eos_penalties=(0.0, 1e4))
    rows = {r["decoding"]: r for r in report["slot_decoding"]}
    assert rows["sequential"]["mean_passes"] == pytest.approx(rows["sequential"]["mean_length"] + 1)
    assert rows["parallel"]["mean_passes"] < rows["sequential"]["mean_passes"]
    orders = {r["decoding"]: r for r in report["learned_order"]}
    assert set(orders) == {"insertion, parallel", "insertion, sequential"}
    # penalty 0 is the checkpoint's own decoding; a penalty no logit gap reaches never
    # ends a slot, so every output runs to its length cap (1.5 x source + 10)
    swept = {(r["decoding"], r["eos_penalty"]): r for r in report["eos_penalty"]}
    caps = [min(int(1.5 * len(s)) + 10, module.model_config.max_len - 2)
            for s in module.source_ids(test_split.source[:40])]
    for mode in ("parallel", "sequential"):
        assert swept[mode, 0.0]["bleu"] == rows[mode]["bleu"] and rows[mode]["eos_penalty"] == 0.0
        assert swept[mode, 1e4]["mean_length"] == pytest.approx(sum(caps) / len(caps), abs=0.01)


def test_diagnose_command_writes_json_markdown_and_plots(trained_cmlm, reversal_root, tmp_path, capsys):
    out = tmp_path / "diag"
    code = main(["diagnose", "--ckpt", str(trained_cmlm), "--src", str(reversal_root / "test.src"),
                 "--ref", str(reversal_root / "test.tgt"), "--out", str(out), "--limit", "20",
                 "--iteration_counts", "1", "3"])
    assert code == 0
    report = json.loads((out / "diagnose.json").read_text())
    assert report["sentences"] == 20 and report["teacher"] is None
    assert "easiest_first" not in {r["policy"] for r in report["order"]}
    assert "## Oracle length" in (out / "diagnose.md").read_text()
    for suffix in ("png", "svg"):
        assert (out / f"diagnose.{suffix}").stat().st_size > 1000
    assert "Order of commitment" in capsys.readouterr().out


@pytest.mark.parametrize("family, decodings", [
    ("ctc", ["beam=1", "beam=5"]), ("dag", ["decoder=greedy", "decoder=lookahead", "decoder=viterbi", "decoder=joint_viterbi"]),
])
def test_single_pass_families_compare_their_decoders(family, decodings, request, test_split):
    module = load_module(request.getfixturevalue(f"trained_{family}"), family=family)
    report = diagnose(module, test_split.source[:30], test_split.target[:30], max_tokens=300)
    assert [r["decoding"] for r in report["decoders"]] == decodings
    assert all(r["mean_passes"] == 1 for r in report["decoders"])


def test_diagnose_decodes_insertion_with_the_penalty_given(trained_insertion, reversal_root, tmp_path):
    out = tmp_path / "diag"
    code = main(["diagnose", "--ckpt", str(trained_insertion), "--src", str(reversal_root / "test.src"),
                 "--ref", str(reversal_root / "test.tgt"), "--out", str(out), "--limit", "10",
                 "--eos_penalty", "1.5", "--eos_penalties"])
    assert code == 0
    report = json.loads((out / "diagnose.json").read_text())
    assert [r["eos_penalty"] for r in report["slot_decoding"]] == [1.5, 1.5] and "eos_penalty" not in report


def test_diagnose_refuses_an_autoregressive_checkpoint(trained_run, reversal_root, tmp_path, capsys):
    code = main(["diagnose", "--ckpt", str(trained_run / "checkpoints" / "best.ckpt"),
                 "--src", str(reversal_root / "test.src"), "--ref", str(reversal_root / "test.tgt"),
                 "--out", str(tmp_path)])
    assert code == 2
    assert ("no diagnostics for a 'autoregressive' checkpoint (families that have: cmlm, ctc, dag, diffusion, "
            "insertion, latent, nat)") in capsys.readouterr().err


def test_batches_keep_each_reference_with_its_source(cmlm, test_split):
    batches: list[Batch] = make_batches(cmlm, test_split.source[:25], test_split.target[:25], 150)
    assert sorted(i for b in batches for i in b.rows) == list(range(25))
    for batch in batches:
        for row, i in enumerate(batch.rows):
            n = int(batch.ref_lengths[row])
            assert cmlm.tokenizer.decode([batch.ref[row, :n].tolist()])[0] == test_split.target[i]
    decoded = decode_all(cmlm, batches, lambda b: cmlm.generate(b.src, iterations=1), lambda r, s: 1)
    assert len(decoded.tokens) == 25
