"""Host memory: freed memory kept for reuse, and the peak of a measured phase."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nargen.memory import _glibc, peak_bytes, reset_peak

# a decoding step's pattern: vocabulary logits and their log-softmax (43 MB each, above
# glibc's largest mmap threshold), made and dropped every round; page faults of the
# rounds after a warm-up
ROUNDS = textwrap.dedent("""
    import resource, sys, torch
    from nargen.memory import keep_freed_memory
    print(keep_freed_memory() if sys.argv[1] == "keep" else False)
    torch.set_num_threads(1)
    weight, hidden = torch.randn(64, 8000), torch.randn(1365, 64)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        (hidden @ weight).log_softmax(-1)
    before = faults()
    for _ in range(5):
        (hidden @ weight).log_softmax(-1)
    print(faults() - before)
""")


def faults_of_five_rounds(mode: str, env_off: bool = False) -> tuple[str, int]:
    env = {"NARGEN_KEEP_FREED_MEMORY": "0"} if env_off else {}
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(_glibc() is None, reason="malloc settings are glibc's")
def test_kept_memory_is_reused_without_page_faults_and_the_switch_turns_it_off():
    took, kept = faults_of_five_rounds("keep")
    _, default = faults_of_five_rounds("default")
    off, unkept = faults_of_five_rounds("keep", env_off=True)
    assert took == "True" and off == "False"
    # 5 rounds x 2 x 43 MB = 100k pages faulted in again by default; kept memory is reused
    assert default > 50_000 and unkept > 50_000
    assert kept < default // 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_of_a_phase_counts_what_the_phase_allocated():
    reset_peak("cpu")
    start = peak_bytes("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    grown = peak_bytes("cpu")
    del block
    assert start is not None and grown is not None
    assert grown - start > 48 * 2**20
