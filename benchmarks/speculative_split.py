"""Where speculative decoding's batch-1 time goes: the drafter's start of each sentence,
its proposals, and the autoregressive model's verification passes, against plain greedy
decoding of the same sentences:

    python benchmarks/speculative_split.py --ckpt runs/ar_tiny/checkpoints/best.ckpt \\
        --draft-ckpt runs/ctc_glat_tiny_distilled/checkpoints/best.ckpt --src test.de \\
        --sentences 200 --blocks 4 8
    python benchmarks/speculative_split.py --ckpt runs/ar_tiny/checkpoints/averaged.ckpt \\
        --draft-ckpt runs/blockwise_tiny/checkpoints/best.ckpt --src val.de --blocks 2 4 8 \\
        --draft-confidence 0 0.3 0.5 0.7
    python benchmarks/speculative_split.py --ckpt runs/ar_tiny/checkpoints/averaged.ckpt \
        --draft-ckpt runs/eagle_tiny/checkpoints/best.ckpt --src val.de --blocks 4 5 6 \
        --trees 1:0 2:8 4:16 4:24

Prints one line per block size (and confidence floor of draft heads, or tree of a
feature-level drafter: ``width:nodes``, nodes 0 for ``block``): ms per sentence split
into the drafter's calls and the target's passes (the rest), passes per sentence, the
share of drafted tokens accepted and the tokens chosen per verification pass.
"""

from __future__ import annotations

import argparse
import time

import torch

from nargen.models import load_drafter
from nargen.decoding import greedy
from nargen.decoding.speculative import HeadsDrafter, speculative
from nargen.models import load_module
from nargen.models.eagle import FeatureDrafter
from profile_decode import read_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="autoregressive model")
    parser.add_argument("--draft-ckpt", required=True, help="drafter checkpoint (any family)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--draft-confidence", type=float, nargs="+", default=[0.0],
                        help="draft heads (a blockwise checkpoint): each confidence floor in turn")
    parser.add_argument("--trees", nargs="+", default=["0:0"],
                        help="a feature-level drafter (an eagle checkpoint): each tree in turn, as "
                             "width:nodes (nodes 0: as many as the block)")
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
        settings = [(b, f, t) for b in args.blocks for f in args.draft_confidence for t in args.trees]
        for block, floor, tree in settings:
            drafter = load_drafter(args.draft_ckpt, module, args.ckpt)
            if floor:
                if not isinstance(drafter, HeadsDrafter):
                    parser.error("--draft-confidence needs a blockwise checkpoint as --draft-ckpt")
                drafter.min_confidence = floor
            width, nodes = (int(x) for x in tree.split(":"))
            if width:
                if not isinstance(drafter, FeatureDrafter):
                    parser.error("--trees needs an eagle checkpoint as --draft-ckpt")
                drafter.width, drafter.nodes = width, nodes or block
            counts: dict[str, int] = {}
            begin = time.perf_counter()
            for src in sources:
                result = speculative(module.model, src, drafter, block=block, **module.decoder_settings())
                for key, value in result.counts.items():
                    counts[key] = counts.get(key, 0) + value
            total = time.perf_counter() - begin
            drafting = counts["draft_ns"] / 1e9
            target = total - drafting
            setting = (f"block {block}" + (f" floor {floor}" if floor else "")
                       + (f" tree {drafter.width}:{drafter.nodes}" if width else ""))
            print(f"{setting}: {1000 * total / n:.1f} ms/sentence = drafter "
                  f"{1000 * drafting / n:.1f} + target "
                  f"{1000 * target / n:.1f} ({counts['target_passes'] / n:.2f} target passes, "
                  f"{1000 * target / max(counts['target_passes'], 1):.2f} ms each with the encoder; "
                  f"{counts['draft_passes'] / n:.2f} drafter passes); "
                  f"{100 * counts['accepted'] / max(counts['proposed'], 1):.1f}% of drafted tokens accepted, "
                  f"{counts['emitted'] / max(counts['target_passes'], 1):.2f} tokens per verification pass")

if __name__ == "__main__":
    main()
