"""Training precision: which one ``auto`` means on this machine, and bf16 autocast that
keeps gradient clipping with the fused optimizer."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim import Optimizer


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where
    bf16 autocast makes the matrix products several times faster than fp32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto``: bf16 mixed precision on a GPU (fp16 where bf16 is missing), and on a CPU
    with native bf16 matrix products; 32-bit elsewhere. Any other value is kept."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


class BF16MixedPrecision(MixedPrecision):
    """Lightning's bf16 autocast, with gradient clipping allowed for optimizers that
    would unscale gradients themselves (the fused AdamW): bf16 never scales them."""

    def __init__(self, device: str) -> None:
        super().__init__("bf16-mixed", device)

    def clip_gradients(self, optimizer: Optimizer, clip_val: int | float = 0.0,
                       gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM) -> None:
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


def precision_settings(precision: str, accelerator: str = "auto") -> tuple[str | None, list[Precision]]:
    """``L.Trainer``'s ``precision`` and precision ``plugins`` for ``precision``
    (``auto`` resolved): bf16 mixed precision comes as a plugin, the rest as a string."""
    resolved = resolve_precision(precision, accelerator)
    if resolved != "bf16-mixed":
        return resolved, []
    device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    return None, [BF16MixedPrecision(device)]
