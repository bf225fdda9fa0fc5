"""The dtype decoding runs in: bf16 on a GPU, fp32 on a CPU, unless asked otherwise."""

from __future__ import annotations

import torch

DECODING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def decoding_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The weights' dtype for decoding on ``device``: ``auto`` is bf16 on a GPU that has
    it and fp32 elsewhere (a CPU decodes small batches faster in fp32); ``fp32``,
    ``bf16`` and ``fp16`` (GPU only) as named."""
    device = torch.device(device)
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DECODING_DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DECODING_DTYPES)}, got {name!r}")
    if name == "fp16" and device.type == "cpu":
        raise ValueError("dtype fp16 needs a GPU (bf16 runs on a CPU too)")
    return DECODING_DTYPES[name]
