"""Host memory: freed memory kept for reuse, and the peak of a measured phase."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nargen.memory import _glibc, peak_bytes, reset_peak

# a 128 MB tensor (above glibc's largest mmap threshold) made, touched and dropped; how
# much resident memory its drop hands back to the kernel
DROP = textwrap.dedent("""
    import os, sys, torch
    from nargen.memory import keep_freed_memory
    print(keep_freed_memory() if sys.argv[1] == "keep" else False)
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    block = torch.ones(128 * 2**20 // 4)
    held = resident()
    del block
    print(held - resident())
""")
MB = 2**20


def returned_on_drop(mode: str, env_off: bool = False) -> tuple[str, int]:
    env = {"NARGEN_KEEP_FREED_MEMORY": "0"} if env_off else {}
    out = subprocess.run([sys.executable, "-c", DROP, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(_glibc() is None or not sys.platform.startswith("linux"),
                    reason="malloc settings are glibc's; resident memory is read from /proc")
def test_kept_memory_stays_resident_for_reuse_and_the_switch_turns_it_off():
    """Kept, a freed block stays in the process for the next allocation (no page faults
    to bring it back); by default glibc unmaps it at once. Resident memory shows which,
    whatever the kernel's page size or fault accounting."""
    took, kept = returned_on_drop("keep")
    _, default = returned_on_drop("default")
    off, unkept = returned_on_drop("keep", env_off=True)
    assert took == "True" and off == "False"
    assert default > 100 * MB and unkept > 100 * MB
    assert kept < 16 * MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_of_a_phase_counts_what_the_phase_allocated():
    reset_peak("cpu")
    start = peak_bytes("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    grown = peak_bytes("cpu")
    del block
    assert start is not None and grown is not None
    assert grown - start > 48 * 2**20
