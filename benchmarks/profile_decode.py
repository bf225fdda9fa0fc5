"""Where nargen's decoding time goes, by operator group (``nargen.bench.profiling``), one
sentence at a time (batch 1) or in token-budget batches:

    python benchmarks/profile_decode.py --ckpt runs/ar_tiny/best.ckpt \\
        --src test.de --skip 10 --sentences 50 [--batched] [--OPTION VALUE ...]

Options after the known ones are decoder options (``--beam 5``, ``--iterations 10``).
The table goes to stderr, the rows as JSON to stdout. ``benchmarks/profile_fairseq.py
generate`` profiles fairseq's generator the same way.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time

import torch

from nargen.models import load_module
from nargen.bench.profiling import NARGEN_REGIONS, REGION, label_regions, summarize


def read_lines(path: str, count: int) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(count), f)]


def parse_value(text: str) -> object:
    """``5`` -> 5, ``true`` -> True, ``1.5`` -> 1.5; anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--skip", type=int, default=10, help="sentences decoded first, not profiled")
    parser.add_argument("--sentences", type=int, default=50, help="sentences profiled")
    parser.add_argument("--batched", action="store_true", help="one token-budget call, not batch 1")
    parser.add_argument("--threads", type=int, default=0)
    args, rest = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {name.lstrip("-").replace("-", "_"): parse_value(value)
               for name, value in zip(rest[::2], rest[1::2])}
    module = load_module(args.ckpt, map_location="cpu")
    lines = read_lines(args.src, args.skip + args.sentences)
    warm, measured = lines[: args.skip], lines[args.skip:]
    module.translate(warm, **options)
    label_regions(module.model, NARGEN_REGIONS)
    calls = [measured] if args.batched else [[line] for line in measured]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for batch in calls:
            with torch.autograd.profiler.record_function(REGION + "step"):
                module.translate(batch, **options)
        wall = time.perf_counter() - started
    profile = summarize(prof.events(), len(calls), wall)
    print(profile.markdown(f"nargen {module.family} {'batched' if args.batched else 'batch 1'} "
                           f"{options or ''}", unit="call"), file=sys.stderr)
    print(json.dumps({"ms_per_call": profile.wall_ms, "calls": len(calls), "groups": profile.rows()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
