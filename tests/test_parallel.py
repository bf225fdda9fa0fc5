"""Parallel families (vanilla NAT, CMLM) and their decoders."""

from __future__ import annotations

import pytest
import torch

from nargen.core import TransformerConfig
from nargen.core.length import LengthPredictor
from nargen.decoding import autoregressive_reranker, length_beam, mask_predict
from nargen.models import CMLMModule, NATModule, load_module
from nargen.models.parallel import uniform_copy
from nargen.data import read_split



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


def test_top_lengths_are_distinct_best_first_and_clamped():
    predictor = LengthPredictor(d_model=4, max_offset=3)  # offsets -3..3
    logits = torch.tensor([
        [0.0, 5.0, 1.0, 3.0, 2.0, 4.0, 0.5],   # source length 2: offsets -3..-1 clamp to 1
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],   # source length 9 near max_len 10: ties
    ])
    src_lengths = torch.tensor([2, 9])
    lengths, scores = predictor.top_lengths(logits, src_lengths, k=4, max_len=10)
    logprobs = torch.log_softmax(logits, -1)
    # row 0: length 1 gathers offsets -3, -2, -1 (best logit 5.0 at offset -2)
    assert lengths[0].tolist() == [1, 4, 2, 3]
    torch.testing.assert_close(scores[0], logprobs[0, [1, 5, 3, 4]])
    # row 1: 9 + (-3..3) clamps 10, 11, 12 to 10; equal scores: shortest first
    assert lengths[1].tolist() == [6, 7, 8, 9]
    for row_lengths, row_scores in zip(lengths, scores):
        assert len(set(row_lengths.tolist())) == 4
        assert (row_lengths >= 1).all() and (row_lengths <= 10).all()
        assert (row_scores[:-1] >= row_scores[1:]).all()


class MaskCounter:
    """Wraps a parallel model and records how many positions are masked at each pass."""

    def __init__(self, module):
        self.module, self.masked, self.masks = module, [], []

    def encode(self, src):
        return self.module.encode(src)

    def predict_lengths(self, encoded, src_lengths, k):
        return self.module.predict_lengths(encoded, src_lengths, k)

    def decode_parallel(self, tokens, encoded, tgt_mask, positions=None):
        self.masks.append(tokens == self.module.mask_id)
        self.masked.append(self.masks[-1].sum(1).tolist())
        return self.module.decode_parallel(tokens, encoded, tgt_mask, positions)


@pytest.mark.parametrize("iterations", [4, 10])
def test_mask_predict_masks_the_scheduled_number_each_iteration(tokenizer, iterations):
    """Pass t (0-based) of T predicts L * (T - t) / T positions, rounded down: all L
    first, then linearly fewer (Ghazvininejad et al. 2019)."""
    counter = MaskCounter(untrained(CMLMModule, tokenizer))
    src, _ = sources()
    result = mask_predict(counter, src, iterations=iterations, length_beam=2,
                          mask_id=counter.module.mask_id, max_len=63, keep_history=True)
    assert result.passes == len(counter.masked) == iterations
    with torch.inference_mode():
        lengths, _ = counter.module.predict_lengths(counter.module.encode(src), (src != 0).sum(1), 2)
    lengths = lengths.flatten().tolist()
    for t, masked in enumerate(counter.masked):
        assert masked == [n * (iterations - t) // iterations for n in lengths], t


def test_cmlm_refuses_copied_decoder_inputs(tokenizer):
    with pytest.raises(ValueError, match="decoder_input 'mask'"):
        untrained(CMLMModule, tokenizer, decoder_input="copy")


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


def test_length_beam_returns_the_candidate_the_reranker_prefers(tokenizer):
    """Every candidate the AR reranker scores is recorded; the output must be the one it
    scored best, and that choice must differ from the model's own somewhere."""
    from nargen.core import Seq2SeqTransformer

    module = untrained(NATModule, tokenizer)
    torch.manual_seed(3)
    ar = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size)).eval()
    score = autoregressive_reranker(ar)
    seen = {}

    def recording(src_rows, candidates):
        scores = score(src_rows, candidates)
        seen["candidates"], seen["scores"] = candidates, scores
        return scores

    src, _ = sources()
    k = 4
    plain = length_beam(module, src, k=k, mask_id=module.mask_id, max_len=63)
    reranked = length_beam(module, src, k=k, mask_id=module.mask_id, max_len=63, rerank=recording)
    assert reranked.passes == plain.passes + 1
    candidates = seen["candidates"].view(src.shape[0], k, -1)
    favourite = seen["scores"].view(src.shape[0], k).argmax(1)
    for i in range(src.shape[0]):
        expected = [t for t in candidates[i, favourite[i]].tolist() if t != 0]
        assert reranked.as_lists(0)[i] == expected
    assert reranked.as_lists(0) != plain.as_lists(0)


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
@pytest.mark.parametrize("family, threshold, options", [
    ("cmlm", 0.8, {"iterations": 4}),
    ("nat", 0.5, {}),
])
def test_parallel_family_learns_to_reverse(family, threshold, options, request, reversal_root):
    checkpoint = request.getfixturevalue(f"trained_{family}")
    module = load_module(checkpoint, family=family)
    test = read_split(reversal_root, "test", "src", "tgt")
    assert exact_match(module, test, **options) >= threshold


def test_mask_predict_schedule_is_the_pass_that_last_predicted_each_position(tokenizer):
    counter = MaskCounter(untrained(CMLMModule, tokenizer))
    src, _ = sources()
    result = mask_predict(counter, src, iterations=5, length_beam=1, mask_id=counter.module.mask_id,
                          max_len=63)
    width = result.tokens.shape[1]
    expected = torch.full(result.tokens.shape, -1)
    for t, masked in enumerate(counter.masks):
        expected[masked[:, :width]] = t
    assert torch.equal(result.schedule, expected)
    assert ((result.schedule >= 0) == (result.tokens != 0)).all()
