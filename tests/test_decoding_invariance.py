"""Every decoder gives a sentence the same output alone as in a batch, and with the KV
cache as without, on trained models (whose decisions are not near ties).

The contract (README, "Batch invariance"): a row's scores alone and in a batch agree
within float tolerance, and every decision (argmax, top-k, re-masking, length and
candidate choice) breaks exact ties by index, so outputs are equal unless two options
score within that tolerance of each other.
"""

from __future__ import annotations

import pytest
import torch

from nargen.data import read_split
from nargen.data.batching import pad_sequences
from nargen.decoding import autoregressive_reranker, greedy
from nargen.models import load_module

SYSTEMS = [
    ("ar", {"beam": 1}),
    ("ar", {"beam": 3}),
    ("ar", {"beam": 3, "length_penalty": 0.6}),
    ("cmlm", {"iterations": 4, "length_beam": 1}),
    ("cmlm", {"iterations": 4, "length_beam": 3}),
    ("cmlm", {"iterations": 10, "length_beam": 3, "early_stop": True}),
    ("nat", {"length_beam": 1}),
    ("nat", {"length_beam": 3}),
    ("nat", {"length_beam": 3, "rerank": "ar"}),
    ("insertion", {"parallel": True}),
    ("insertion", {"parallel": False}),
    ("ctc", {"beam": 1}),
    ("ctc", {"beam": 4}),
    ("dag", {"decoder": "greedy"}),
    ("dag", {"decoder": "lookahead"}),
    ("dag", {"decoder": "viterbi"}),
    ("dag", {"decoder": "joint_viterbi", "dedup": False}),
    ("latent", {"latent_beam": 1}),
    ("latent", {"latent_beam": 3}),
]


@pytest.fixture(scope="module")
def checkpoints(trained_run, trained_cmlm, trained_nat, trained_insertion, trained_ctc, trained_dag,
                trained_latent):
    return {"ar": trained_run / "checkpoints" / "best.ckpt", "cmlm": trained_cmlm, "nat": trained_nat,
            "insertion": trained_insertion, "ctc": trained_ctc, "dag": trained_dag, "latent": trained_latent}


def source_rows(module, root, n=24) -> list[torch.Tensor]:
    """Test sentences of mixed lengths, tokenized with EOS as the model reads them."""
    test = read_split(root, "test", "src", "tgt")
    ids = module.tokenizer.encode(test.source[:n])
    return [torch.tensor(x + [module.ids.eos]) for x in ids]


@pytest.mark.slow
@pytest.mark.parametrize("family, options", SYSTEMS, ids=lambda v: str(v))
def test_trained_decoder_is_batch_invariant(family, options, checkpoints, reversal_root):
    module = load_module(checkpoints[family])
    options = dict(options)
    if options.get("rerank") == "ar":
        options["rerank"] = autoregressive_reranker(load_module(checkpoints["ar"]).model)
    rows = source_rows(module, reversal_root)
    assert len({len(r) for r in rows}) > 3  # the batch really mixes lengths (and padding)
    batch = module.generate(pad_sequences(rows, module.ids.pad), **options)
    alone = [module.generate(r[None], **options) for r in rows]
    assert batch.as_lists(module.ids.pad) == [a.as_lists(module.ids.pad)[0] for a in alone]
    if batch.scores is not None:  # the scores behind the decisions agree within tolerance
        torch.testing.assert_close(batch.scores, torch.cat([a.scores for a in alone]),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_trained_greedy_is_the_same_with_and_without_the_cache(checkpoints, reversal_root):
    module = load_module(checkpoints["ar"])
    src = pad_sequences(source_rows(module, reversal_root), module.ids.pad)
    with_cache = greedy(module.model, src, ids=module.ids, use_cache=True)
    without = greedy(module.model, src, ids=module.ids, use_cache=False)
    assert torch.equal(with_cache.tokens, without.tokens)
    assert with_cache.passes == without.passes
