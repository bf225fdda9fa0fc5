"""Peak memory of a measured phase: on CUDA the allocator's high-water mark, on Linux
CPUs the process's resident-set high-water mark (VmHWM), reset at the phase's start."""

from __future__ import annotations

from pathlib import Path

import torch


def reset_peak(device: torch.device | str) -> None:
    """Start a new high-water mark (best effort: a kernel without ``clear_refs``
    keeps the process-wide peak)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_bytes(device: torch.device | str) -> int | None:
    """Bytes at the high-water mark since ``reset_peak``; None where unknown."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
