"""Sliding-window attention: the band it masks, what it lets a position see, the bounded
KV cache of windowed decoding, and every family built with windows."""

from __future__ import annotations

import warnings

import pytest
import torch

from nargen.core import TransformerConfig
from nargen.core.attention import band_mask
from nargen.core.cache import KVCache
from nargen.core.transformer import Seq2SeqTransformer
from nargen.data.datamodule import collate_pairs
from nargen.models import FAMILIES


def micro(**overrides) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(TransformerConfig.from_preset("micro", max_len=128, **overrides)).eval()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("query_start, key_start", [(0, 0), (9, 3), (12, 12)])
def test_band_mask_is_the_window_written_out(causal, query_start, key_start):
    window, queries, keys = 4, 5, 11
    mask = band_mask(queries, keys, query_start, key_start, window, causal, torch.device("cpu"))
    for i in range(queries):
        for j in range(keys):
            distance = (query_start + i) - (key_start + j)
            expected = 0 <= distance < window if causal else abs(distance) < window
            assert bool(mask[i, j]) == expected, (i, j)


@pytest.mark.parametrize("causal", [True, False])
def test_windowed_model_equals_the_naive_kernel_and_a_wide_window_equals_full_attention(causal):
    src = torch.randint(6, 64, (3, 20))
    src[1, 14:] = 0
    tgt = torch.randint(6, 64, (3, 17))
    windowed = micro(encoder_window=3, decoder_window=4)
    with torch.inference_mode():
        fused = windowed(src, tgt, causal=causal)
        windowed.set_attention_kernel("naive")
        naive = windowed(src, tgt, causal=causal)
        full = micro()(src, tgt, causal=causal)
        wide = micro(encoder_window=20, decoder_window=17)(src, tgt, causal=causal)
    torch.testing.assert_close(fused, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wide, full, rtol=1e-5, atol=1e-5)
    assert (fused - full).abs().max() > 1e-2  # a narrow window does change the output


def test_a_position_sees_exactly_its_receptive_field():
    """Two encoder layers with a window of 3: position 10 depends on positions 6..14 and on
    nothing farther (masked scores weigh exactly zero)."""
    model = micro(encoder_window=3)
    src = torch.randint(6, 64, (1, 24))
    with torch.inference_mode():
        base = model.encode(src).memory[0, 10]
        for position, seen in ((4, False), (5, False), (6, True), (14, True), (15, False), (20, False)):
            changed = src.clone()
            changed[0, position] = 6 if src[0, position] != 6 else 7
            moved = not torch.equal(model.encode(changed).memory[0, 10], base)
            assert moved == seen, position


def test_windowed_decoding_with_its_bounded_cache_equals_teacher_forcing():
    model = micro(decoder_window=4)
    src = torch.randint(6, 64, (2, 9))
    tgt = torch.randint(6, 64, (2, 40))
    with torch.inference_mode():
        encoded = model.encode(src)
        forced = model.decode(tgt, encoded)
        cache = model.new_cache(encoded, 40)
        steps, held = [], []
        for t in range(40):
            steps.append(model.decode(tgt[:, t:t + 1], encoded, cache=cache))
            held.append(cache.self_attention_elements())
    torch.testing.assert_close(torch.cat(steps, dim=1), forced, rtol=1e-5, atol=1e-5)
    per_position = 2 * 2 * 2 * 16  # K and V, 2 rows, 2 K/V heads, head_dim 16
    assert max(held) <= 2 * 4 * model.cfg.decoder_layers * per_position  # never past twice the window
    assert cache.start > 0 and cache.length == 40


def test_windowed_cache_rolls_back_inside_the_window_and_refuses_past_it():
    model = micro(decoder_window=6)
    src = torch.randint(6, 64, (1, 9))
    tgt = torch.randint(6, 64, (1, 30))
    with torch.inference_mode():
        encoded = model.encode(src)
        forced = model.decode(tgt, encoded)
        cache = model.new_cache(encoded, 30)
        model.decode(tgt[:, :20], encoded, cache=cache)  # one pass of 20 positions
        wrong = torch.randint(6, 64, (1, 4))
        model.decode(wrong, encoded, cache=cache)  # drafted, then rejected
        cache.truncate(20)
        again = model.decode(tgt[:, 20:30], encoded, cache=cache)
        torch.testing.assert_close(again, forced[:, 20:30], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="window dropped everything before position"):
            cache.truncate(cache.start - 1)


def test_cache_without_a_window_is_unbounded_as_before():
    cache = KVCache(1, capacity=8)
    k = torch.zeros(1, 1, 5, 2)
    cache.append(0, k, k)
    cache.advance(5)
    cache.append(0, k, k)
    cache.advance(5)
    assert cache.start == 0 and cache.keys[0].shape[2] == 10


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_decodes_with_windows(family, tokenizer):
    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, absolute_positions=True,
                                        encoder_window=3, decoder_window=3)
    module = FAMILIES[family](cfg, tokenizer)
    items = [(i, torch.tensor(tokenizer.encode([s])[0] + [2]), torch.tensor(tokenizer.encode([t])[0]))
             for i, (s, t) in enumerate([("ka lo mi nu", "nu mi lo ka"), ("za bu pe", "pe bu za")])]
    loss = module.loss(collate_pairs(items))
    assert torch.isfinite(loss)
    loss.backward()
    module.eval()
    out = module.translate(["ka lo mi nu su", "za bu"])
    assert len(out.texts) == 2


@pytest.mark.parametrize("causal", [True, False])
def test_flex_attention_block_sparse_path_equals_the_band_mask(causal):
    """The path a GPU compiles (FlexAttention, block-sparse), run eagerly here: the same
    outputs as the dense band mask, padding included."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    src = torch.randint(6, 64, (2, 40))
    src[1, 25:] = 0
    tgt = torch.randint(6, 64, (2, 33))
    model = micro(encoder_window=5, decoder_window=6)
    with torch.inference_mode():
        dense = model(src, tgt, causal=causal)
        for module in model.modules():
            if hasattr(module, "flex_windows"):
                module.flex_windows = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex_attention warns that eager is for debugging
            sparse = model(src, tgt, causal=causal)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_a_model_can_use_absolute_positions_alone():
    model = micro(rotary_positions=False, absolute_positions=True, decoder_window=4)
    assert all(m.rotary is None for m in model.modules() if hasattr(m, "rotary"))
    src, tgt = torch.randint(6, 64, (1, 12)), torch.randint(6, 64, (1, 12))
    with torch.inference_mode():
        encoded = model.encode(src)
        forced = model.decode(tgt, encoded)
        cache = model.new_cache(encoded, 12)
        steps = torch.cat([model.decode(tgt[:, t:t + 1], encoded, cache=cache) for t in range(12)], dim=1)
    torch.testing.assert_close(steps, forced, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs rotary_positions or absolute_positions"):
        TransformerConfig(rotary_positions=False)


@pytest.mark.parametrize("causal", [True, False])
def test_long_sequences_attend_window_by_window_as_the_band_mask_does(causal):
    """Past four windows, a sequence attends one block of queries at a time against the
    keys its windows reach: the same outputs and gradients as one dense band mask."""
    src = torch.randint(6, 64, (2, 50))
    src[1, 31:] = 0
    tgt = torch.randint(6, 64, (2, 45))
    model = micro(encoder_window=4, decoder_window=5)
    blocked = model(src, tgt, causal=causal)
    blocked.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for module in model.modules():  # one dense band mask at every length
        if hasattr(module, "window_blocks"):
            module.window_blocks = False
    dense = model(src, tgt, causal=causal)
    dense.square().mean().backward()
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in grads)  # bounded by the gradient's scale, not per element
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4 * scale)
