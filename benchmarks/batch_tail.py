"""Batched greedy throughput (each sentence leaves the batch as it ends) against the
speculative loop's two parts, on one split: the loop with a drafter that proposes
nothing (it too drops each sentence as it ends), from the first pass or once at most
``--rows`` sentences are left, and a drafter's checkpoint drafting once at most
``--rows`` are left (``draft_at_rows``; several values measure each): what the loop's own bookkeeping costs, and what
drafting for a batch's last sentences gains. Every output is checked against greedy's,
text for text; the median of ``--repeats`` alternated runs is printed::

    python benchmarks/batch_tail.py --ckpt runs/ar_tiny/checkpoints/averaged.ckpt \\
        --drafter runs/eagle_tiny/checkpoints/best.ckpt --options '{block: 4, tree_width: 1, tree_nodes: 4}' \\
        --src test_2016_flickr.de.gz --rows 16 4 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch
import yaml

from nargen.data.corpus import read_lines
from nargen.models import load_module


class NoDrafts:
    """A drafter that proposes nothing: the speculative loop decodes greedily, one token
    a sentence a pass."""

    passes = 0

    def start(self, src: torch.Tensor) -> None:
        pass

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        return [[] for _ in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="the autoregressive model")
    parser.add_argument("--drafter", help="a checkpoint that drafts for it (eagle, blockwise, specdec)")
    parser.add_argument("--options", default="{}", help="the drafter checkpoint's decoding options (YAML)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[16], help="draft_at_rows (one or more)")
    parser.add_argument("--max-tokens", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    src = read_lines(args.src)
    model = load_module(args.ckpt, map_location="cpu")
    budget = {"max_tokens": args.max_tokens}
    runs: dict[str, Callable[[], Any]] = {
        "greedy": lambda: model.translate(src, beam=1, **budget),
        "no drafts, each sentence dropped as it ends": lambda: model.translate(
            src, draft=NoDrafts(), block=1, **budget),
    }
    drafter = load_module(args.drafter, map_location="cpu") if args.drafter else None
    options = yaml.safe_load(args.options)
    for rows in args.rows:
        runs[f"no drafts, greedy until <= {rows} left"] = lambda rows=rows: model.translate(
            src, draft=NoDrafts(), block=1, draft_at_rows=rows, **budget)
        if drafter is not None:
            runs[f"drafter, greedy until <= {rows} left"] = lambda rows=rows: drafter.translate(
                src, draft_at_rows=rows, **options, **budget)
    reference = runs["greedy"]().texts
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            texts = run().texts
            seconds[name].append(time.perf_counter() - start)
            same = sum(a == b for a, b in zip(texts, reference))
            if same != len(reference):
                raise SystemExit(f"{name}: {len(reference) - same} outputs differ from greedy's")
    greedy_s = statistics.median(seconds["greedy"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:45s} {len(src) / median:7.1f} sentences/s  {greedy_s / median:.2f}x greedy")
    print(f"every output identical to greedy's ({len(reference)} sentences)")


if __name__ == "__main__":
    main()
