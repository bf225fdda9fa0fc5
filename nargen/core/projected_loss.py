"""The vocabulary projection and label-smoothed cross-entropy as one operation, a block
of rows at a time: the ``[tokens, vocab]`` logits are never held whole, and their
gradient is formed while each block is still in cache."""

from __future__ import annotations

import torch

_CPU_BLOCK_ELEMENTS = 1 << 21
"""Logits per block on a CPU (8 MB of fp32: 262 rows of an 8,000-word vocabulary)."""
_DEVICE_BLOCK_ELEMENTS = 1 << 26
"""Logits per block on an accelerator, where each block costs kernel launches."""


def _block_rows(hidden: torch.Tensor, vocab: int) -> int:
    elements = _CPU_BLOCK_ELEMENTS if hidden.device.type == "cpu" else _DEVICE_BLOCK_ELEMENTS
    return max(64, elements // vocab)


def _block_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one block and its log-probabilities (fp32, ``[rows, vocab]``)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = logp.gather(1, target[:, None]).sum()
    loss = -(1.0 - smoothing) * nll
    if smoothing:
        loss = loss - smoothing / logp.shape[1] * logp.sum()
    return loss, logp


class _ProjectedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients block by block (the gradient of the
    mean loss with respect to the logits is ``softmax - (1 - e) onehot - e / V``, over
    the number of rows); backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, target, smoothing, rows):  # noqa: ANN001, ANN205
        count, vocab = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, count, rows):
            h, t = hidden[start : start + rows], target[start : start + rows]
            loss, grad = _block_loss(h @ weight.t(), t, smoothing)
            total += loss
            grad = grad.exp_()  # softmax
            if smoothing:
                grad.sub_(smoothing / vocab)
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0 - smoothing
            grad = grad.to(h.dtype)
            if want_hidden:
                grad_hidden[start : start + rows] = grad @ weight
            if want_weight:
                grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.count, ctx.weight_dtype = count, weight.dtype
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.count
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
            None, None, None,
        )


@torch.compiler.disable  # its loop over blocks would recompile for every token count
def projected_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``cross_entropy((hidden @ weight.T).float(), target, label_smoothing=...)``, the mean
    over the rows of ``hidden`` ``[tokens, d]`` (``weight``: ``[vocab, d]``; ``target``:
    ``[tokens]``), with the same gradients, computed a block of rows at a time. Without
    gradients it only sums the blocks' losses. The products run in the dtype autocast
    gives them, as the plain expression's would."""
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [tokens, d] with a target per token, got {tuple(hidden.shape)} "
                         f"and {tuple(target.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("projected_cross_entropy needs at least one token")
    rows = _block_rows(hidden, weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ProjectedCrossEntropy.apply(hidden, weight, target, float(label_smoothing), rows)
    total = sum(
        _block_loss(hidden[s : s + rows] @ weight.t(), target[s : s + rows], label_smoothing)[0]
        for s in range(0, hidden.shape[0], rows)
    )
    return total / hidden.shape[0]
