"""Attention kernels, grouped-query heads, rotary positions, cache size."""

import pytest
import torch

from nargen.core import Attention, RotaryEmbedding, Seq2SeqTransformer, TransformerConfig
from nargen.core.attention import naive_kernel, sdpa_kernel


def random_qkv(batch=2, heads=4, kv_heads=2, tq=5, tk=7, dim=16):
    return (torch.randn(batch, heads, tq, dim), torch.randn(batch, kv_heads, tk, dim),
            torch.randn(batch, kv_heads, tk, dim))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_sdpa_equals_naive_reference_with_padding_mask(kv_heads):
    q, k, v = random_qkv(kv_heads=kv_heads)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False
    torch.testing.assert_close(sdpa_kernel(q, k, v, mask, False, 0.0),
                               naive_kernel(q, k, v, mask, False, 0.0), atol=1e-5, rtol=1e-5)


def test_sdpa_equals_naive_reference_causal():
    q, k, v = random_qkv(tq=6, tk=6)
    torch.testing.assert_close(sdpa_kernel(q, k, v, None, True, 0.0),
                               naive_kernel(q, k, v, None, True, 0.0), atol=1e-5, rtol=1e-5)


def repeat_kv_heads(weight: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """Rows of a K (or V) projection for ``kv_heads`` heads, each head repeated
    ``groups`` times: the multi-head projection that grouped-query attention stands for."""
    rows, cols = weight.shape
    return weight.view(kv_heads, rows // kv_heads, cols).repeat_interleave(groups, 0).reshape(-1, cols)


def test_grouped_query_model_equals_multi_head_model_with_repeated_kv_weights():
    grouped_cfg = TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=2)
    grouped = Seq2SeqTransformer(grouped_cfg).eval()
    full = Seq2SeqTransformer(TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=4)).eval()
    d, kv = grouped_cfg.d_model, grouped_cfg.n_kv_heads * grouped_cfg.head_dim
    state = {}
    for name, weight in grouped.state_dict().items():
        if name.endswith("qkv_proj.weight"):  # rows: Q, then K, then V
            q, k, v = weight.split([d, kv, kv])
            weight = torch.cat([q, repeat_kv_heads(k, 2, 2), repeat_kv_heads(v, 2, 2)])
        elif name.endswith("kv_proj.weight"):  # rows: K, then V
            k, v = weight.chunk(2)
            weight = torch.cat([repeat_kv_heads(k, 2, 2), repeat_kv_heads(v, 2, 2)])
        state[name] = weight
    full.load_state_dict(state)
    src = torch.randint(6, 64, (3, 9))
    src[1, 5:] = 0
    tgt = torch.randint(6, 64, (3, 7))
    for causal in (True, False):
        torch.testing.assert_close(grouped(src, tgt, causal=causal), full(src, tgt, causal=causal),
                                   atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in grouped.parameters()) < sum(p.numel() for p in full.parameters())


def test_sharing_layers_attend_with_their_owners_kv():
    cfg = TransformerConfig.from_preset("micro", decoder_layers=4, share_decoder_kv=True)
    model = Seq2SeqTransformer(cfg).eval()
    owner, sharer = model.decoder_layers[0], model.decoder_layers[1]
    assert not any("kv" in name for name, _ in sharer.named_parameters())
    used: dict[str, tuple] = {}

    def record(name):
        return lambda module, args, output: used.__setitem__(name, output[1])

    for layer, name in ((owner, "owner"), (sharer, "sharer")):
        layer.self_attn.register_forward_hook(record(name + ".self"))
        layer.cross_attn.register_forward_hook(record(name + ".cross"))
    src, tgt = torch.randint(6, 64, (2, 6)), torch.randint(6, 64, (2, 5))

    def run():
        with torch.no_grad():
            model(src, tgt)
        return {k: tuple(t.clone() for t in v) for k, v in used.items()}

    before = run()
    for part in ("self", "cross"):
        for a, b in zip(before[f"owner.{part}"], before[f"sharer.{part}"]):
            assert torch.equal(a, b)
    with torch.no_grad():  # perturb only the owner's K/V projections
        owner.self_attn.qkv_proj.weight[cfg.d_model :] += 0.5
        owner.cross_attn.kv_proj.weight.add_(0.5)
    after = run()
    for part in ("self", "cross"):
        assert not torch.equal(before[f"sharer.{part}"][0], after[f"sharer.{part}"][0])
        for a, b in zip(after[f"owner.{part}"], after[f"sharer.{part}"]):
            assert torch.equal(a, b)


def test_model_with_naive_kernel_matches_sdpa():
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro")).eval()
    src = torch.randint(6, 64, (3, 9))
    src[0, 6:] = 0
    tgt = torch.randint(6, 64, (3, 7))
    fused = model(src, tgt)
    model.set_attention_kernel("naive")
    torch.testing.assert_close(model(src, tgt), fused, atol=1e-4, rtol=1e-4)


def test_rotary_scores_depend_only_on_relative_offset():
    rotary = RotaryEmbedding(head_dim=16, max_len=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        return float((rotary(q, offset=m) * rotary(k, offset=n)).sum())

    for shift in (1, 7, 30):
        assert score(3, 1) == pytest.approx(score(3 + shift, 1 + shift), abs=1e-4)
        assert score(10, 20) == pytest.approx(score(10 + shift, 20 + shift), abs=1e-4)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # but it does depend on the offset


def test_rotary_leaves_norm_unchanged():
    rotary = RotaryEmbedding(head_dim=8, max_len=32)
    x = torch.randn(2, 3, 10, 8)
    torch.testing.assert_close(rotary(x, 5).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kv_cache_size_scales_with_kv_heads(kv_heads):
    cfg = TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=kv_heads)
    model = Seq2SeqTransformer(cfg).eval()
    src = torch.randint(6, 64, (2, 5))
    encoded = model.encode(src)
    cache = model.new_cache(encoded, 8)
    model.decode(torch.ones(2, 3, dtype=torch.long), encoded, cache=cache)
    per_head = 2 * cfg.decoder_layers * 2 * 3 * cfg.head_dim  # K+V, layers, batch, steps, dim
    assert cache.self_attention_elements() == per_head * kv_heads
    assert all(k.shape[1] == kv_heads for k in cache.keys)


def test_cross_layer_sharing_halves_the_cache_and_the_kv_projections():
    plain = TransformerConfig.from_preset("micro", decoder_layers=4)
    shared = TransformerConfig.from_preset("micro", decoder_layers=4, share_decoder_kv=True)
    sizes = []
    for cfg in (plain, shared):
        model = Seq2SeqTransformer(cfg).eval()
        encoded = model.encode(torch.randint(6, 64, (2, 5)))
        cache = model.new_cache(encoded, 8)
        model.decode(torch.ones(2, 3, dtype=torch.long), encoded, cache=cache)
        sizes.append(cache.self_attention_elements())
        owners = sum(layer.self_attn.qkv_proj is not None for layer in model.decoder_layers)
        assert owners == (2 if cfg.share_decoder_kv else 4)
    assert sizes[1] * 2 == sizes[0]


def test_config_rejects_kv_heads_that_do_not_divide_heads():
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=3)


def test_attention_without_projection_requires_shared_kv():
    layer = Attention(32, 4, 2, rotary=None, owns_kv=False)
    with pytest.raises(RuntimeError, match="shares K/V"):
        layer(torch.randn(1, 3, 32))
    cross = Attention(32, 4, 2, rotary=None, cross=True, owns_kv=False)
    with pytest.raises(RuntimeError, match="shares K/V"):
        cross.project_kv(torch.randn(1, 3, 32))


@pytest.mark.parametrize("kv_heads, share", [(4, False), (2, False), (1, False), (2, True)])
def test_measured_kv_bytes_per_token_follow_the_attention_layout(tokenizer, kv_heads, share):
    """What the bench reports is measured from the cache tensors; it must equal
    2 (K and V) x cached layers x K/V heads x head size x 4 bytes."""
    from nargen.evaluation import kv_cache_footprint
    from nargen.models import AutoregressiveModule

    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, n_kv_heads=kv_heads,
                                        share_decoder_kv=share)
    module = AutoregressiveModule(cfg, tokenizer).eval()
    measured = kv_cache_footprint(module, ["ka lo mi", "nu pe ro su ti"], steps=5)
    layers = cfg.decoder_layers // 2 if share else cfg.decoder_layers
    assert measured["kv_bytes_per_token"] == 2 * layers * kv_heads * cfg.head_dim * 4


def _rotate_half_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def test_rotary_values_and_gradient_equal_the_rotate_half_formula():
    rotary = RotaryEmbedding(head_dim=8, max_len=32).double()
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = rotary.cos[4:14], rotary.sin[4:14]
    grad = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    (ours,) = torch.autograd.grad(rotary(x, 4), x, grad)
    (reference,) = torch.autograd.grad(_rotate_half_reference(x, cos, sin), x, grad)
    torch.testing.assert_close(rotary(x, 4), _rotate_half_reference(x, cos, sin))
    torch.testing.assert_close(ours, reference)
    with torch.no_grad():  # the inference path computes the same values
        torch.testing.assert_close(rotary(x, 4), _rotate_half_reference(x, cos, sin))


def attention_ops(model: Seq2SeqTransformer, src: torch.Tensor, tgt: torch.Tensor, device: str) -> set[str]:
    """Names of the attention operators one training forward and backward runs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(src, tgt)
        logits.float().sum().backward()
    return {e.name for e in prof.events() if "attention" in e.name}


def batch(device: str, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target ids of a micro model (pad id 0), with or without padding."""
    src = torch.randint(3, 64, (4, 9), device=device)
    tgt = torch.randint(3, 64, (4, 7), device=device)
    if padded:
        src[1, 6:], tgt[2, 5:] = 0, 0
    return src, tgt


def test_cpu_training_attention_runs_the_fused_flash_kernel():
    """Padding masks, causal masks and grouped K/V heads all stay on the CPU flash
    kernel; the unfused math fallback (what attention dropout would force) never runs."""
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=2)).train()
    ops = attention_ops(model, *batch("cpu", padded=True), "cpu")
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


FUSED_ATTENTION = {
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_runs_a_fused_attention_kernel():
    """Under bf16 autocast, with and without padding (causal self-attention, grouped K/V
    heads), attention runs a fused kernel (flash, memory-efficient or cuDNN, whichever
    the GPU and torch pick), never the math fallback."""
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", n_heads=4, n_kv_heads=2)).cuda().train()
    for padded in (False, True):
        ops = attention_ops(model, *batch("cuda", padded=padded), "cuda")
        assert ops & FUSED_ATTENTION and "aten::_scaled_dot_product_attention_math" not in ops, (padded, ops)


def test_bf16_cpu_training_attention_keeps_bf16_and_matches_fp32_gradients():
    """With gradients, half-precision attention on a CPU runs in fp32 (the flash kernel's
    bf16 backward is several times slower): output still bf16, values and gradients those
    of the fp32 kernel on the same bf16 inputs, up to the output's rounding."""
    q, k, v = (t.bfloat16().requires_grad_() for t in random_qkv(kv_heads=2, tq=6, tk=6))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    out = sdpa_kernel(q, k, v, mask, False, 0.0)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected = sdpa_kernel(*ref, mask, False, 0.0)
    expected.bfloat16().float().square().sum().backward()
    torch.testing.assert_close(out.float(), expected.bfloat16().float())
    for got, want in zip((q, k, v), ref):
        torch.testing.assert_close(got.grad.float(), want.grad.bfloat16().float(), rtol=2e-2, atol=2e-2)
