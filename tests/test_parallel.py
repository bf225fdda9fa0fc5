"""Parallel families (vanilla NAT, CMLM) and their decoders."""

from __future__ import annotations

import pytest
import torch

from nargen.core import TransformerConfig
from nargen.decoding import autoregressive_reranker, length_beam, mask_predict
from nargen.models import CMLMModule, NATModule, load_module
from nargen.models.parallel import uniform_copy
from nargen.data import read_split

from conftest import reversal_config


def untrained(family, tokenizer, **options):
    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size)
    return family(cfg, tokenizer, family_options=options).eval()


def sources(n=5):
    gen = torch.Generator().manual_seed(1)
    rows = [torch.cat([torch.randint(6, 36, (length,), generator=gen), torch.tensor([2])])
            for length in [3, 9, 5, 7, 1][:n]]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), rows


def test_uniform_copy_spreads_source_over_target():
    src = torch.arange(4.0)[None, :, None]  # source vectors 0, 1, 2, 3
    out = uniform_copy(src, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 7, dtype=torch.bool))
    assert out.flatten().tolist() == [0, 0, 1, 2, 2, 2, 3] or out.flatten().tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 3


@pytest.mark.parametrize("family", [NATModule, CMLMModule])
def test_one_iteration_equals_the_single_parallel_pass(family, tokenizer):
    module = untrained(family, tokenizer)
    src, _ = sources()
    with torch.inference_mode():
        encoded = module.encode(src)
        lengths, _ = module.predict_lengths(encoded, (src != 0).sum(1), 1)
        lengths = lengths[:, 0]
        real = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        tokens = torch.full(real.shape, module.mask_id).masked_fill(~real, 0)
        logits = module.decode_parallel(tokens, encoded, real)
        logits[..., [0, 1, 2, 4, 5]] = float("-inf")
        expected = logits.argmax(-1).masked_fill(~real, 0)
    result = mask_predict(module, src, iterations=1, length_beam=1, mask_id=module.mask_id,
                          max_len=63, banned=(5,))
    assert result.passes == 1
    assert torch.equal(result.tokens, expected)


@pytest.mark.parametrize("k, early_stop", [(1, False), (3, False), (3, True)])
def test_mask_predict_is_batch_invariant(tokenizer, k, early_stop):
    module = untrained(CMLMModule, tokenizer)
    batch, rows = sources()
    options = {"iterations": 4, "length_beam": k, "early_stop": early_stop}
    together = module.generate(batch, **options).as_lists(0)
    alone = [module.generate(r[None], **options).as_lists(0)[0] for r in rows]
    assert together == alone


def test_length_beam_of_one_is_no_length_beam(tokenizer):
    module = untrained(NATModule, tokenizer)
    src, _ = sources()
    single = length_beam(module, src, k=1, mask_id=module.mask_id, max_len=63, banned=(5,))
    direct = module.generate(src)  # decode_config default: length_beam 1
    assert torch.equal(single.tokens, direct.tokens) and single.passes == direct.passes == 1


def test_mask_predict_history_and_early_stop(tokenizer):
    module = untrained(CMLMModule, tokenizer)
    src, _ = sources()
    full = mask_predict(module, src, iterations=10, mask_id=module.mask_id, max_len=63,
                        keep_history=True)
    assert len(full.history) == full.passes == 10
    result = mask_predict(module, src, iterations=10, mask_id=module.mask_id, max_len=63,
                          keep_history=True, early_stop=True)
    assert len(result.history) == result.passes <= 10
    assert torch.equal(result.history[-1], result.tokens)
    assert all(h.shape == result.tokens.shape for h in result.history)
    # Until the first candidate freezes, stopping early changes nothing.
    assert torch.equal(result.history[1], full.history[1])


def test_length_beam_picks_the_rerankers_favourite(tokenizer):
    module = untrained(NATModule, tokenizer)
    src, _ = sources()

    def prefer_short(src_rows, candidates):
        return -(candidates != 0).sum(1).float()

    plain = length_beam(module, src, k=4, mask_id=module.mask_id, max_len=63)
    reranked = length_beam(module, src, k=4, mask_id=module.mask_id, max_len=63, rerank=prefer_short)
    assert reranked.passes == plain.passes + 1
    assert ((reranked.tokens != 0).sum(1) <= (plain.tokens != 0).sum(1)).all()


def test_autoregressive_reranker_scores_match_teacher_forcing(tokenizer):
    from nargen.core import Seq2SeqTransformer

    ar = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size)).eval()
    src, _ = sources(2)
    candidates = torch.tensor([[7, 8, 9], [10, 11, 0]])
    scores = autoregressive_reranker(ar)(src, candidates)
    for i, toks in enumerate([[7, 8, 9], [10, 11]]):
        lp = torch.log_softmax(ar(src[i:i + 1], torch.tensor([[1] + toks])), -1)[0]
        gold = torch.tensor(toks + [2])
        assert scores[i].item() == pytest.approx(lp.gather(1, gold[:, None]).mean().item(), abs=1e-5)


def exact_match(module, pair, **options) -> float:
    out = module.translate(pair.source, **options).texts
    return sum(o == r for o, r in zip(out, pair.target)) / len(pair.target)


@pytest.mark.slow
@pytest.mark.parametrize("family, steps, threshold, options", [
    ("cmlm", 600, 0.8, {"iterations": 4}),
    ("nat", 600, 0.5, {}),
])
def test_parallel_family_learns_to_reverse(family, steps, threshold, options, reversal_root, tmp_path):
    from nargen.cli.fit import run_fit

    config = reversal_config(reversal_root, tmp_path / "run", tmp_path / "c", steps,
                             "--family", family, "--model.absolute_positions", "true")
    run_fit(config)
    module = load_module(tmp_path / "run" / "checkpoints" / "best.ckpt", family=family)
    test = read_split(reversal_root, "test", "src", "tgt")
    assert exact_match(module, test, **options) >= threshold
