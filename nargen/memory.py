"""Host memory: keeping freed memory for reuse, and the peak memory of a measured phase
(on CUDA the allocator's high-water mark, on Linux CPUs the process's resident-set
high-water mark, VmHWM, reset at the phase's start)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from pathlib import Path

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters of glibc's malloc.h


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory tensors free for the next ones instead of
    handing it back to the kernel; returns whether it took effect.

    By default glibc serves every allocation above 32 MB (a batch's logits, a beam
    step's vocabulary scores) with a fresh ``mmap`` and unmaps it on free, so the next
    step page-faults all of it in again, and it trims the heap's free top as well; on a
    2-core VM that was a fifth to a third of training time in the kernel. With mmap off
    and trimming off, a process's steady state reuses its own pages: resident memory
    stays at its high-water mark (as it does under jemalloc or tcmalloc, which PyTorch's
    CPU tuning guides recommend for the same reason). ``NARGEN_KEEP_FREED_MEMORY=0``
    leaves malloc as it is; so does a non-glibc C library.
    """
    if os.environ.get("NARGEN_KEEP_FREED_MEMORY", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    mmap = libc.mallopt(_M_MMAP_MAX, ctypes.c_int(0))
    return bool(trim and mmap)


def release_freed_memory() -> None:
    """Give the kernel back the free memory malloc keeps (glibc's ``malloc_trim``), so a
    phase measured after it starts from what is live."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))


def reset_peak(device: torch.device | str) -> None:
    """Start a new high-water mark (best effort: a kernel without ``clear_refs``
    keeps the process-wide peak)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_freed_memory()  # memory kept from earlier phases would count as this one's
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
