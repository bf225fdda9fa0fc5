"""Whole-model properties: cache equals full pass, padding, causal masks, length caps."""

import pytest
import torch

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.core.dropout import Dropout
from nargen.core.feedforward import swiglu_gate
from nargen.decoding import beam_search, greedy


def micro_model(**overrides) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(TransformerConfig.from_preset("micro", **overrides)).eval()


@pytest.mark.parametrize("overrides", [
    {}, {"n_kv_heads": 1}, {"share_decoder_kv": True}, {"absolute_positions": True},
])
def test_cached_step_logits_equal_full_forward(overrides):
    model = micro_model(**overrides)
    src = torch.randint(6, 64, (3, 8))
    src[2, 5:] = 0
    tgt = torch.randint(6, 64, (3, 10))
    full = model(src, tgt)
    encoded = model.encode(src)
    cache = model.new_cache(encoded, capacity=10)
    steps = [model.decode(tgt[:, i : i + 1], encoded, cache=cache) for i in range(10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padding_leaves_real_positions_unchanged():
    model = micro_model()
    src = torch.randint(6, 64, (1, 6))
    tgt = torch.randint(6, 64, (1, 5))
    padded_src = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    enc, enc_padded = model.encode(src), model.encode(padded_src)
    torch.testing.assert_close(enc_padded.memory[:, :6], enc.memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode(tgt, enc_padded), model.decode(tgt, enc), atol=1e-5, rtol=1e-5)
    # bidirectional decoder: target padding does not reach real target positions
    padded_tgt = torch.cat([tgt, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    bi = model.decode(tgt, enc, causal=False, tgt_mask=tgt != 0)
    bi_padded = model.decode(padded_tgt, enc, causal=False, tgt_mask=padded_tgt != 0)
    torch.testing.assert_close(bi_padded[:, :5], bi, atol=1e-5, rtol=1e-5)


def test_bidirectional_decoder_sees_the_future_and_causal_does_not():
    model = micro_model()
    enc = model.encode(torch.randint(6, 64, (1, 6)))
    tgt = torch.randint(6, 64, (1, 5))
    changed = tgt.clone()
    changed[0, -1] = (tgt[0, -1] + 1 - 6) % 58 + 6
    causal_a, causal_b = model.decode(tgt, enc), model.decode(changed, enc)
    torch.testing.assert_close(causal_a[:, :-1], causal_b[:, :-1])
    bi_a = model.decode(tgt, enc, causal=False)
    bi_b = model.decode(changed, enc, causal=False)
    assert not torch.allclose(bi_a[:, 0], bi_b[:, 0])


def test_decoders_respect_per_sentence_length_caps():
    model = micro_model()
    src = torch.randint(6, 64, (2, 4))
    for out in (greedy(model, src, max_len_a=0, max_len_b=3), beam_search(model, src, beam=2, max_len_a=0, max_len_b=3)):
        assert out.tokens.shape[1] <= 3
        assert out.passes <= 4


def test_cache_reorder_follows_the_chosen_rows():
    model = micro_model()
    src = torch.randint(6, 64, (3, 6))
    tgt = torch.randint(6, 64, (3, 5))
    encoded = model.encode(src)
    cache = model.new_cache(encoded, 8)
    model.decode(tgt[:, :3], encoded, cache=cache)  # three positions in one causal pass
    rows = torch.tensor([2, 0, 0, 1])
    cache.reorder(rows)
    step = model.decode(tgt[rows, 3:4], encoded.index_select(rows), cache=cache)
    full = model(src[rows], tgt[rows, :4])
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_reorders_in_turn_and_shrinking_follow_the_chosen_rows():
    """After several reorders in a row, one of them dropping rows, every cached step
    still equals the uncached model on the prefixes the rows now hold."""
    model = micro_model().eval()
    src = torch.randint(6, 64, (3, 6))
    tgt = torch.randint(6, 64, (6, 7))
    encoded = model.encode(src)
    rows = torch.tensor([0, 1, 2, 0, 1, 2])  # which source each cache row decodes
    enc = encoded.index_select(rows)
    cache = model.new_cache(enc, 8)
    history = torch.arange(6)  # target row whose prefix each cache row holds
    model.decode(tgt[:, :1], enc, cache=cache)
    for t, order in enumerate([[1, 0, 3, 2, 5, 4], [0, 0, 2, 3, 4, 5], [5, 1, 2], [2, 0, 1], [1, 1, 0]], start=1):
        order = torch.tensor(order)
        cache.reorder(order)
        history, rows = history[order], rows[order]
        enc = enc.index_select(order)
        # each row continues the prefix it now holds with that target row's next token
        prefix = tgt[history, : t + 1]
        step = model.decode(prefix[:, -1:], enc, cache=cache)
        full = model(src[rows], prefix)
        torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_rms_norm_values_and_gradients_equal_torch_rms_norm():
    from nargen.core.norms import rms_norm

    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, 16, dtype=torch.float64)
    ours = rms_norm(x, weight, 1e-6)
    reference = torch.nn.functional.rms_norm(x, (16,), weight, 1e-6)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, (x, weight), grad),
                               torch.autograd.grad(reference, (x, weight), grad))
    with torch.no_grad():
        torch.testing.assert_close(rms_norm(x, weight, 1e-6), reference)


def test_rms_norm_without_gradients_equals_the_training_forward_bit_for_bit():
    from nargen.core.norms import rms_norm

    x = torch.randn(4, 7, 32) * 3
    weight = torch.randn(32, requires_grad=True)
    trained = rms_norm(x, weight, 1e-6)  # the autograd function's forward
    with torch.no_grad():
        inferred = rms_norm(x, weight, 1e-6)
    assert torch.equal(inferred, trained.detach())
    torch.testing.assert_close(inferred, torch.nn.functional.rms_norm(x, (32,), weight.detach(), 1e-6))


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 1}, {"share_decoder_kv": True}])
@torch.no_grad()
def test_rows_grouped_by_source_decode_as_copies_of_the_source(overrides):
    """g target rows per encoded source (beam search's layout) give the logits of a
    batch holding g copies of each source, cached step by step and after a reorder that
    drops a source."""
    model = micro_model(**overrides)
    src = torch.randint(6, 64, (3, 7))
    src[1, 4:] = 0
    g = 4
    tgt = torch.randint(6, 64, (3 * g, 6))
    encoded = model.encode(src)
    copies = encoded.index_select(torch.arange(3).repeat_interleave(g))
    torch.testing.assert_close(model.decode(tgt, encoded), model.decode(tgt, copies), atol=1e-5, rtol=1e-5)
    grouped, expanded = model.new_cache(encoded, 6), model.new_cache(copies, 6)
    for t in range(3):
        a = model.decode(tgt[:, t : t + 1], encoded, cache=grouped)
        b = model.decode(tgt[:, t : t + 1], copies, cache=expanded)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # keep sources 2 and 0 (in that order), each with its rows shuffled among themselves
    rows = torch.tensor([9, 8, 8, 11, 0, 3, 2, 1])
    grouped.reorder(rows, cross=torch.tensor([2, 0]))
    expanded.reorder(rows)
    a = model.decode(tgt[rows, 3:4], encoded.index_select(torch.tensor([2, 0])), cache=grouped)
    b = model.decode(tgt[rows, 3:4], copies.index_select(rows), cache=expanded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="5 target rows do not divide among 3 sources"):
        model.decode(tgt[:5], encoded)


def test_swiglu_gate_values_and_gradients_equal_autograd_through_chunk():
    gate_up = torch.randn(3, 5, 2 * 12, requires_grad=True)
    grad = torch.randn(3, 5, 12)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    expected.backward(grad)
    want = gate_up.grad.clone()
    gate_up.grad = None
    got = swiglu_gate(gate_up)
    got.backward(grad)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gate_up.grad, want, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(swiglu_gate(gate_up), expected.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_about_p_and_scales_the_rest_without_rounding_the_scale(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 50, 32).to(dtype)
    drop = Dropout(0.1).train()
    out = drop(x)
    kept = out != 0
    assert 0.08 < 1 - kept.float().mean().item() < 0.12
    scale = 16384 / (16384 - drop.threshold)
    expected = x.float()[kept] * torch.tensor(scale, dtype=torch.float32)  # fp32 product math
    torch.testing.assert_close(out[kept], expected.to(dtype), rtol=0, atol=0)
    assert torch.equal(drop.eval()(x), x)
