"""The blockwise projection + label-smoothed cross-entropy equals the plain expression."""

import pytest
import torch
import torch.nn.functional as F

from nargen.core import TransformerConfig
from nargen.core.projected_loss import projected_cross_entropy
from nargen.core.transformer import Seq2SeqTransformer


def _inputs(tokens: int, vocab: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, dim, generator=g)
    weight = torch.randn(vocab, dim, generator=g)
    target = torch.randint(0, vocab, (tokens,), generator=g)
    return hidden, weight, target


def _plain(hidden, weight, target, smoothing):  # noqa: ANN001, ANN202
    logits = hidden @ weight.t()
    return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), target,
                           label_smoothing=smoothing)


_ROUNDING = 1e-4
"""How far an fp32 gradient may stray from the float64 truth, as a share of the largest
gradient element. Each element sums 8,000 products whose terms nearly cancel; the order
of that sum (blocks here, one matrix product there, and each CPU's kernels) moves the
result by a few 1e-6 of the gradient's scale on both CPU kinds we run on, so elementwise
relative bounds fail on elements that cancel to near zero."""


def _assert_gradient_close(grad: torch.Tensor, truth: torch.Tensor) -> None:
    scale = truth.abs().max().item()
    torch.testing.assert_close(grad.to(truth.dtype), truth, rtol=0.0, atol=_ROUNDING * scale)


@pytest.mark.parametrize("tokens", [1, 263, 600])  # one row; a block and one row; several blocks
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_value_and_gradients_equal_the_plain_expression(tokens: int, smoothing: float) -> None:
    hidden, weight, target = _inputs(tokens, vocab=8000)  # 262 rows a block on a CPU
    results = []
    for fn, dtype in ((_plain, torch.float64), (projected_cross_entropy, torch.float32)):
        h = hidden.to(dtype).clone().requires_grad_()
        w = weight.to(dtype).clone().requires_grad_()
        loss = fn(h, w, target, smoothing)
        (3.0 * loss).backward()  # the incoming gradient scales both
        results.append((loss.detach(), h.grad, w.grad))
    (exact, exact_h, exact_w), (blocked, blocked_h, blocked_w) = results
    torch.testing.assert_close(blocked.double(), exact, rtol=1e-5, atol=1e-5)
    _assert_gradient_close(blocked_h, exact_h)
    _assert_gradient_close(blocked_w, exact_w)


def test_without_gradients_and_with_one_input_frozen() -> None:
    hidden, weight, target = _inputs(300, vocab=5000)
    expected = _plain(hidden, weight, target, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(projected_cross_entropy(hidden, weight, target, 0.1), expected)
    h = hidden.clone().requires_grad_()
    projected_cross_entropy(h, weight, target, 0.1).backward()  # weight frozen
    reference = hidden.double().requires_grad_()
    _plain(reference, weight.double(), target, 0.1).backward()
    _assert_gradient_close(h.grad, reference.grad)


def test_bf16_autocast_stays_close_to_the_plain_expression() -> None:
    hidden, weight, target = _inputs(400, vocab=3000, dim=64)
    results = []
    for fn in (_plain, projected_cross_entropy):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(h, w, target, 0.1)
        loss.backward()
        assert h.grad.dtype == w.grad.dtype == torch.float32
        results.append((loss.detach(), h.grad, w.grad))
    for blocked, plain in zip(results[1], results[0]):
        torch.testing.assert_close(blocked, plain, rtol=2e-2, atol=2e-2 * plain.abs().max().item())


def test_the_transformer_loss_trains_the_tied_embedding_as_the_logits_would() -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("tiny", vocab_size=300, encoder_layers=1,
                                                             decoder_layers=1)).eval()  # no dropout
    src, tgt = torch.randint(1, 300, (3, 7)), torch.randint(1, 300, (3, 5))
    grads = []
    for use_blocks in (False, True):
        model.zero_grad()
        hidden = model.decode_hidden(model.embed_tokens(tgt), model.encode(src)).flatten(0, 1)
        if use_blocks:
            loss = model.output_loss(hidden, tgt.flatten(), 0.1)
        else:
            loss = F.cross_entropy(model.output_logits(hidden), tgt.flatten(), label_smoothing=0.1)
        loss.backward()
        grads.append(model.embed.weight.grad.clone())
    _assert_gradient_close(grads[1], grads[0])


def test_bad_shapes_are_named() -> None:
    hidden, weight, target = _inputs(10, vocab=50)
    with pytest.raises(ValueError, match=r"\[tokens, d\]"):
        projected_cross_entropy(hidden[None], weight, target)
    with pytest.raises(ValueError, match="at least one token"):
        projected_cross_entropy(hidden[:0], weight, target[:0])
