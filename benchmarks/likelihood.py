"""Negative log-likelihood per target token on one split: a masked diffusion model's
bound (``DiffusionModule.nll_bound``) beside an autoregressive model's exact NLL, on the
same sentences, counted alike (target tokens plus one end each):

    python benchmarks/likelihood.py --diffusion runs/diffusion_tiny_distilled_from_ar/checkpoints/averaged.ckpt \\
        --ar runs/ar_tiny/checkpoints/averaged.ckpt --src val.de.gz --ref val.en.gz [--samples 16]

``--samples``: mask rates per sentence for the bound (stratified; more: a tighter
estimate of the same bound). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from nargen.data.batching import pad_sequences, token_budget_batches
from nargen.data.corpus import read_lines
from nargen.diagnose import teacher_nll
from nargen.models import load_module


def batches(module, sources: list[str], references: list[str], max_tokens: int):
    """Training-style batches (source; BOS + target; target + EOS) of the split."""
    src_ids, tgt_ids = module.source_ids(sources), module.tokenizer.encode(references)
    ids = module.ids
    for rows in token_budget_batches([len(s) + len(t) for s, t in zip(src_ids, tgt_ids)], max_tokens):
        tgt = [tgt_ids[i][: module.model_config.max_len - 2] for i in rows]
        yield {
            "src": module.source_tensor([src_ids[i] for i in rows]),
            "tgt_in": pad_sequences([torch.tensor([ids.bos, *t]) for t in tgt], ids.pad).to(module.device),
            "tgt_out": pad_sequences([torch.tensor([*t, ids.eos]) for t in tgt], ids.pad).to(module.device),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=4000)
    args = parser.parse_args()
    sources, references = read_lines(args.src), read_lines(args.ref)
    diffusion, ar = load_module(args.diffusion, map_location="cpu"), load_module(args.ar, map_location="cpu")
    if diffusion.tokenizer.model_bytes != ar.tokenizer.model_bytes:
        parser.error("the two checkpoints must share a tokenizer (a diffusion model trained from the AR one's)")
    diffusion.options.bound_samples = args.samples
    generator = torch.Generator().manual_seed(0)
    bound = exact = 0.0
    tokens = ar_tokens = 0
    for batch in batches(diffusion, sources, references, args.max_tokens):
        nats, n = diffusion.nll_bound(batch, generator)
        bound, tokens = bound + float(nats), tokens + n
        nats, n = teacher_nll(ar, batch)
        exact, ar_tokens = exact + nats, ar_tokens + n
    assert tokens == ar_tokens, (tokens, ar_tokens)
    print(json.dumps({"sentences": len(sources), "tokens": tokens, "samples": args.samples,
                      "diffusion_nll_bound_per_token": round(bound / tokens, 4),
                      "ar_nll_per_token": round(exact / tokens, 4)}))


if __name__ == "__main__":
    main()
