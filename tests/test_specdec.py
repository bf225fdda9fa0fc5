"""A block drafter on the verifier's own encoder (SpecDec): training leaves the model
untouched, the drafter learns to propose its next tokens a block per pass from the
model's encoder output, and decoding gives the model's greedy output token for token."""

from __future__ import annotations

import pytest
import torch

from nargen.data.batching import pad_sequences
from nargen.decoding import greedy
from nargen.models import read_checkpoint

from drafting import (
    assert_greedy_output, assert_it_drafts_for_the_plain_model, assert_only_the_drafter_trained, reversal_sources,
    train_drafter,
)

BLOCK = 6


@pytest.fixture(scope="module")
def specdec_run(trained_run, reversal_root, tmp_path_factory):
    """The block drafter on the reversal model, 400 updates."""
    return train_drafter("specdec", f"{{draft_block: {BLOCK}, draft_layers: 2}}", trained_run, reversal_root,
                         tmp_path_factory)


@pytest.fixture(scope="module")
def sources(specdec_run, reversal_root):
    return reversal_sources(specdec_run[0], reversal_root)


def test_a_cut_canvas_holds_the_prefix_then_queries_for_the_tokens_after_it():
    from nargen.models.specdec import SpecDecModule

    class Ids:  # the two ids the canvas needs
        pad, bos = 0, 1

    module = SpecDecModule.__new__(SpecDecModule)
    module.__dict__["ids"] = Ids
    sentences = [[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]]  # tokens then EOS (2)
    tgt_in = pad_sequences([torch.tensor([1] + s[:-1]) for s in sentences], 0)
    tgt_out = pad_sequences([torch.tensor(s) for s in sentences], 0)
    for cuts in ([0, 0, 0], [3, 1, 2], [2, 0, 5]):
        tokens, queries, wanted = SpecDecModule._cut(module, {"tgt_in": tgt_in, "tgt_out": tgt_out},
                                                     torch.tensor(cuts), 3)
        for row, (sentence, cut) in enumerate(zip(sentences, cuts)):
            assert tokens[row, : cut + 1].tolist() == [1] + sentence[:cut]
            assert queries[row].nonzero().flatten().tolist() == list(range(cut + 1, cut + 4))
            expected = (sentence[cut : cut + 3] + [0, 0, 0])[:3]
            assert wanted[row, cut + 1 : cut + 4].tolist() == expected
            assert int((wanted[row] != 0).sum()) == sum(t != 0 for t in expected)


@pytest.mark.slow
def test_training_moves_only_the_drafter(specdec_run, trained_run):
    teacher = read_checkpoint(trained_run / "checkpoints" / "best.ckpt")["state_dict"]
    trained = assert_only_the_drafter_trained(specdec_run[0], trained_run)
    assert not any(k.startswith("model.") for k in trained if k not in teacher)  # no encoder of its own
    assert specdec_run[1]["steps"] == 400


@pytest.mark.slow
def test_the_drafter_reads_the_models_encoder_and_saves_passes(sources, monkeypatch):
    module, src = sources
    reference = greedy(module.model, src, **module.decoder_settings())
    calls = []
    encode = module.model.encode
    monkeypatch.setattr(module.model, "encode", lambda x: calls.append(x.shape) or encode(x))
    out = module.generate(src, block=BLOCK)
    assert len(calls) == 1  # the verifier's encoder, once; the drafter has none
    assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert out.counts["target_passes"] < 0.7 * reference.passes
    assert out.counts["draft_passes"] == out.counts["target_passes"]  # a drafter pass per block


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("block", [1, 3, BLOCK, BLOCK + 4])
def test_output_equals_the_model_greedy_output(sources, batch, block):
    assert_greedy_output(*sources, batch, block=block)


@pytest.mark.slow
def test_the_drafter_drafts_for_the_plain_model_as_a_drafter_checkpoint(specdec_run, trained_run, sources):
    specdec, src = sources
    assert_it_drafts_for_the_plain_model(specdec_run[0], trained_run, specdec, src, BLOCK)
