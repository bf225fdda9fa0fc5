"""Where speculative decoding's batch-1 time goes: the drafter's start of each sentence,
its proposals, and the autoregressive model's verification passes, against plain greedy
decoding of the same sentences:

    python benchmarks/speculative_split.py --ckpt runs/ar_tiny/checkpoints/best.ckpt \\
        --draft-ckpt runs/ctc_glat_tiny_distilled/checkpoints/best.ckpt --src test.de \\
        --sentences 200 --blocks 4 8
    python benchmarks/speculative_split.py --ckpt runs/ar_tiny/checkpoints/averaged.ckpt \\
        --draft-ckpt runs/blockwise_tiny/checkpoints/best.ckpt --src val.de --blocks 2 4 8 \\
        --draft-confidence 0 0.3 0.5 0.7

Prints one line per block size (and confidence floor of draft heads): ms per sentence
split into drafter start, proposals and target passes (the rest), passes per sentence
and the share of drafted tokens accepted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from nargen.models import load_drafter
from nargen.decoding import greedy
from nargen.decoding.speculative import HeadsDrafter, speculative
from nargen.models import load_module
from profile_decode import read_lines


def timed(drafter: Any) -> dict[str, float]:
    """Wrap ``drafter``'s ``start``, ``propose`` and (draft heads) ``observe`` to add up
    their seconds."""
    seconds = {name: 0.0 for name in ("start", "propose", "observe") if hasattr(drafter, name)}
    for name in seconds:
        method = getattr(drafter, name)

        def wrapper(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            out = _method(*args, **kwargs)
            seconds[_name] += time.perf_counter() - begin
            return out

        setattr(drafter, name, wrapper)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="autoregressive model")
    parser.add_argument("--draft-ckpt", required=True, help="drafter checkpoint (any family)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--draft-confidence", type=float, nargs="+", default=[0.0],
                        help="draft heads (a blockwise checkpoint): each confidence floor in turn")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load_module(args.ckpt).eval()
    sources = [module.encode_batch([line]) for line in read_lines(args.src, args.sentences)]
    n = len(sources)
    with torch.inference_mode():
        begin = time.perf_counter()
        passes = sum(greedy(module.model, src, **module.decoder_settings()).passes for src in sources)
        print(f"greedy: {1000 * (time.perf_counter() - begin) / n:.1f} ms/sentence, {passes / n:.2f} passes")
        for block, floor in [(b, f) for b in args.blocks for f in args.draft_confidence]:
            drafter = load_drafter(args.draft_ckpt, module, args.ckpt)
            if floor:
                if not isinstance(drafter, HeadsDrafter):
                    parser.error("--draft-confidence needs a blockwise checkpoint as --draft-ckpt")
                drafter.min_confidence = floor
            seconds = timed(drafter)
            counts: dict[str, int] = {}
            begin = time.perf_counter()
            for src in sources:
                result = speculative(module.model, src, drafter, block=block, **module.decoder_settings())
                for key, value in result.counts.items():
                    counts[key] = counts.get(key, 0) + value
            total = time.perf_counter() - begin
            target = total - sum(seconds.values())
            setting = f"block {block}" + (f" floor {floor}" if floor else "")
            print(f"{setting}: {1000 * total / n:.1f} ms/sentence = drafter start "
                  f"{1000 * seconds['start'] / n:.1f} + proposals "
                  f"{1000 * (seconds['propose'] + seconds.get('observe', 0.0)) / n:.1f} + target "
                  f"{1000 * target / n:.1f} ({counts['target_passes'] / n:.2f} target passes, "
                  f"{1000 * target / max(counts['target_passes'], 1):.2f} ms each with the encoder; "
                  f"{counts['draft_passes'] / n:.2f} drafter passes); "
                  f"{100 * counts['accepted'] / max(counts['proposed'], 1):.1f}% of drafted tokens accepted")


if __name__ == "__main__":
    main()
