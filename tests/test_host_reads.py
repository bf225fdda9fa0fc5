"""Decoding loops read the device only where they must: greedy's one read (which
sentences have finished? they leave the batch) happens once per ``check_every`` steps,
and the output does not depend on how often it happens; beam search reads once a step. Counted with the profiler on a CPU, where a read shows
as ``aten::item`` / ``aten::_local_scalar_dense`` / ``aten::is_nonzero`` / ``aten::nonzero``
events exactly as a device synchronisation would on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.decoding import beam_search, greedy
from nargen.bench.profiling import host_reads

EOS = 2


@pytest.fixture(scope="module")
def model_and_source():
    """Random weights with EOS never chosen (its embedding, hence its logit, is 0 and
    below the best of the other tokens'): every sentence runs to its 30-token cap."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=40)).eval()
    with torch.no_grad():
        model.embed.weight[EOS].zero_()
    src = torch.tensor([[5, 6, 7, 8, 9, 10, EOS], [11, 12, 13, EOS, 0, 0, 0]])
    return model, src


def test_greedy_reads_the_device_once_per_check(model_and_source):
    model, src = model_and_source
    settings = {"max_len_a": 0.0, "max_len_b": 30, "max_len": 64}
    greedy(model, src, **settings)  # warm-up
    reads, outputs = {}, {}
    for every in (1, 4, 8):
        reads[every], outputs[every] = host_reads(lambda: greedy(model, src, check_every=every, **settings))
    steps = 31  # 30 tokens, then EOS at the cap
    # a read is at most 3 events (is_nonzero, item, _local_scalar_dense); a few more
    # belong to the call, not to its steps (the encoder's padding check, the output width)
    for every, count in reads.items():
        assert count <= 3 * math.ceil(steps / every) + 12, (every, count)
    assert reads[8] < reads[4] < reads[1]
    # the output and the passes reported do not depend on how often the loop looks
    for every in (4, 8):
        assert torch.equal(outputs[every].tokens, outputs[1].tokens)
        assert outputs[every].passes == outputs[1].passes == steps
        assert torch.equal(outputs[every].hit_cap, outputs[1].hit_cap)


def test_check_every_must_be_positive(model_and_source):
    model, src = model_and_source
    with pytest.raises(ValueError, match="check_every"):
        greedy(model, src, check_every=0)


def test_finished_sentences_leave_the_batch_and_steps_past_eos_change_nothing(model_and_source):
    """Rows that end at different steps before their caps: a finished row leaves the
    batch at the next read; checking every 8 steps runs past the last EOS, which changes
    no token, no pass count and no cap flag."""
    model, src = model_and_source
    ends = torch.tensor([5, 11])  # the step at which each row emits EOS

    def finishing():  # noqa: ANN202 - a fresh step counter for each decoding
        step = 0

        def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            nonlocal step
            chosen = logits.argmax(-1).masked_fill(ends[rows] == step, EOS)
            step += 1
            return chosen

        return pick

    widths: dict[int, list[int]] = {}  # rows in each pass, by check_every
    decode = model.decode

    def counted(tokens: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        widths[every].append(tokens.shape[0])
        return decode(tokens, *args, **kwargs)

    results = []
    model.decode = counted
    try:
        for every in (1, 8):
            widths[every] = []
            results.append(greedy(model, src, check_every=every, max_len_a=0.0, max_len_b=30, max_len=64,
                                  pick=finishing()))
    finally:
        del model.decode
    plain, sparse = results
    assert plain.as_lists(0) == sparse.as_lists(0)
    assert [len(row) for row in plain.as_lists(0)] == [5, 11]
    assert plain.passes == sparse.passes == 12
    assert not plain.hit_cap.any() and not sparse.hit_cap.any()
    # a finished sentence leaves the batch at the first read after its EOS
    assert widths[1] == [2] * 6 + [1] * 6
    assert widths[8] == [2] * 8 + [1] * 8  # to the read after the last EOS


def test_beam_search_reads_the_device_about_once_a_step(model_and_source):
    """One transfer a step brings the candidates back (ties would cost a second); the
    rest of the call reads a handful of times (caps, the encoder's padding check)."""
    model, src = model_and_source
    settings = {"max_len_a": 0.0, "max_len_b": 30, "max_len": 64}
    for rows in ([0], [0, 1]):
        beam_search(model, src[rows], beam=4, **settings)  # warm-up
        reads, result = host_reads(lambda: beam_search(model, src[rows], beam=4, **settings))
        assert result.passes == 31
        assert reads <= result.passes + 12, (rows, reads)
