"""Position-wise feed-forward block."""

import torch
from torch import nn

from nargen.core.dropout import Dropout


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) * W3 x)``, the gated feed-forward of PaLM and Llama."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.dropout(nn.functional.silu(gate) * up))
