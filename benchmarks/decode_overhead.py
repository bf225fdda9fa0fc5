"""Decoding speed where the host's overhead dominates: batch-1 milliseconds a sentence,
batched sentences a second, and host reads a sentence (profiler events of device reads,
as ``tests/test_host_reads.py`` counts them), for a list of systems:

    python benchmarks/decode_overhead.py --src test.de.gz --system ar=runs/ar_tiny/best.ckpt \\
        --system "ar beam 4=runs/ar_tiny/best.ckpt" --option "ar beam 4" beam=4 ...

``--system NAME=CKPT`` adds a system; ``--option NAME KEY=VALUE`` gives it a decoder
option (JSON values; ``draft=CKPT`` loads a drafter). With ``PYTHONPATH=OTHER`` it
measures another checkout's nargen (one that has ``nargen.bench.profiling.host_reads``; the
"before" figures of RESULTS.md came from this script's first version, which counted
reads the same way in itself) for before/after figures on one machine. One JSON line
per system on stdout.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from typing import Any

import torch
from nargen.models import load_module
from nargen.bench.profiling import host_reads


def read_lines(path: str, count: int) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(count), f)]


def host_reads_per_sentence(module: Any, lines: list[str], options: dict[str, Any]) -> float:
    """Host reads (``nargen.bench.profiling.host_reads``) per sentence, one at a time."""
    reads, _ = host_reads(lambda: [module.translate([line], **options) for line in lines])
    return reads / len(lines)


def measure(module: Any, lines: list[str], options: dict[str, Any], warmup: int, latency: int,
            reads: int, max_tokens: int) -> dict[str, Any]:
    for line in lines[:warmup]:
        module.translate([line], **options)
    module.translate(lines[warmup:], max_tokens=max_tokens, **options)  # batched warm-up
    times = []
    for line in lines[warmup : warmup + latency]:
        started = time.perf_counter()
        module.translate([line], **options)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    module.translate(lines, max_tokens=max_tokens, **options)
    batched = len(lines) / (time.perf_counter() - started)
    return {
        "batch1_ms_mean": round(1000 * statistics.fmean(times), 2),
        "batch1_ms_p90": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 2),
        "batched_sentences_per_s": round(batched, 1),
        "host_reads_per_sentence": round(host_reads_per_sentence(module, lines[:reads], options), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="source sentences (plain or .gz)")
    parser.add_argument("--system", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--option", action="append", nargs=2, default=[], metavar=("NAME", "KEY=VALUE"))
    parser.add_argument("--sentences", type=int, default=1000, help="sentences decoded batched")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--latency", type=int, default=200, help="sentences timed one at a time")
    parser.add_argument("--reads", type=int, default=20, help="sentences whose host reads are counted")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = read_lines(args.src, args.sentences)
    for system in args.system:
        name, ckpt = system.rsplit("=", 1)
        module = load_module(ckpt, map_location="cpu").eval()
        options: dict[str, Any] = {}
        for owner, setting in args.option:
            if owner != name:
                continue
            key, value = setting.split("=", 1)
            if key == "draft":
                from nargen.models import load_drafter

                options[key] = load_drafter(value, module, ckpt)
                continue
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
        row = measure(module, lines, options, args.warmup, args.latency, args.reads, args.max_tokens)
        print(json.dumps({"system": name, **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
