"""Draft heads on a frozen autoregressive model (blockwise parallel decoding): training
leaves the model untouched, the heads learn to propose its next tokens, and decoding in
their blocks gives its greedy output token for token in fewer passes."""

from __future__ import annotations

import pytest

from nargen.config import ConfigError
from nargen.training.fit import run_fit
from nargen.decoding import HeadsDrafter, greedy

from conftest import reversal_config
from drafting import (
    assert_greedy_output, assert_it_drafts_for_the_plain_model, assert_only_the_drafter_trained, reversal_sources,
    train_drafter,
)

HEADS = 4


@pytest.fixture(scope="module")
def blockwise_run(trained_run, reversal_root, tmp_path_factory):
    """Four draft heads on the reversal model, 400 updates (about 10 s)."""
    return train_drafter("blockwise", f"{{heads: {HEADS}}}", trained_run, reversal_root, tmp_path_factory)


@pytest.fixture(scope="module")
def sources(blockwise_run, reversal_root):
    return reversal_sources(blockwise_run[0], reversal_root)


@pytest.mark.slow
def test_training_moves_only_the_heads(blockwise_run, trained_run):
    trained = assert_only_the_drafter_trained(blockwise_run[0], trained_run)
    heads = [k for k in trained if k.startswith("heads.")]
    assert len({k.split(".")[1] for k in heads}) == HEADS


@pytest.mark.slow
def test_the_heads_learn_to_propose_what_the_model_then_chooses(blockwise_run, sources):
    module, src = sources
    reference = greedy(module.model, src, **module.decoder_settings())
    out = module.generate(src, block=HEADS)
    # out of 4 drafted tokens, most are the model's own next ones on this easy task
    assert out.counts["accepted"] > 0.6 * out.counts["proposed"]
    assert out.counts["target_passes"] < 0.5 * reference.passes
    assert out.counts["draft_passes"] == 0
    assert blockwise_run[1]["steps"] == 400


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("block", [1, 2, HEADS])
def test_output_equals_the_model_greedy_output(sources, batch, block):
    assert_greedy_output(*sources, batch, block=block)


@pytest.mark.slow
def test_a_confidence_floor_drafts_less_and_changes_no_output(sources):
    module, src = sources
    reference = greedy(module.model, src, **module.decoder_settings())
    full = module.generate(src, block=HEADS)
    assert full.counts["accepted"] < full.counts["proposed"]  # some drafts are wrong
    floors = [module.generate(src, block=HEADS, draft_confidence=p) for p in (0.5, 0.9, 1.01)]
    for out in floors:
        assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert 0 < floors[1].counts["proposed"] <= full.counts["proposed"]
    # no probability reaches 1.01: nothing is drafted, and every pass is a greedy step
    assert floors[2].counts["proposed"] == 0
    assert floors[2].counts["target_passes"] == reference.passes


@pytest.mark.slow
def test_block_zero_is_plain_greedy_and_too_long_a_block_is_refused(sources):
    module, src = sources
    assert module.generate(src, block=0).passes == greedy(module.model, src, **module.decoder_settings()).passes
    with pytest.raises(ValueError, match=f"block {HEADS + 1} exceeds this model's {HEADS} draft heads"):
        module.generate(src, block=HEADS + 1)


@pytest.mark.slow
def test_teacher_forced_acceptance_matches_what_decoding_accepts(sources):
    """With the model's own greedy output as the target, ``accepted_lengths`` counts at
    each position the drafted tokens decoding would accept there: at block = heads, the
    tokens decoding accepts in all are those counted at the positions it drafted from."""
    module, src = sources
    ids = module.ids
    outputs = greedy(module.model, src, **module.decoder_settings()).as_lists(ids.pad)
    lengths = module.accepted_lengths(src, outputs)
    assert lengths.numel() == sum(len(o) for o in outputs)
    # decode each sentence alone, following where it drafts from: the lengths there add up
    expected = accepted = 0
    for row, output in enumerate(outputs):
        one = module.generate(src[row : row + 1, : int((src[row] != ids.pad).sum())], block=HEADS)
        accepted += one.counts["accepted"]
        position = 0  # the output position whose token the model chose last
        per_row = lengths[sum(len(o) for o in outputs[:row]) : sum(len(o) for o in outputs[: row + 1])]
        while position < len(output):
            take = int(per_row[position])
            expected += take
            position += take + 1
    assert accepted == expected


@pytest.mark.slow
def test_the_heads_draft_for_the_plain_model_as_a_drafter_checkpoint(blockwise_run, trained_run, sources):
    """``--draft_ckpt`` with a blockwise checkpoint: its heads read the target's states."""
    blockwise, src = sources
    assert isinstance(blockwise.as_drafter(), HeadsDrafter)
    assert_it_drafts_for_the_plain_model(blockwise_run[0], trained_run, blockwise, src, HEADS)


def test_fit_needs_the_model_to_put_heads_on(reversal_root, tmp_path):
    config = reversal_config(reversal_root, tmp_path / "run", tmp_path / "c", 1, "--family", "blockwise")
    with pytest.raises(ConfigError, match="trainer.init_from"):
        run_fit(config)
