"""Position-wise feed-forward block."""

import torch
from torch import nn

from nargen.core.dropout import Dropout


class _SwiGLUGate(torch.autograd.Function):
    """``silu(gate) * up`` of the two halves of one projection ``[..., 2 * hidden]``,
    whose backward writes both halves' gradients straight into one tensor of the
    projection's shape (autograd through ``chunk`` would join them with a copy)."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        gate, up = gate_up.chunk(2, dim=-1)
        activated = nn.functional.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


def swiglu_gate(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate, up = gate_up.chunk(2, -1)``."""
    if torch.is_grad_enabled() and gate_up.requires_grad:
        return _SwiGLUGate.apply(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) * W3 x)``, the gated feed-forward of PaLM and Llama."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(swiglu_gate(self.gate_up(x))))
