"""The latent family: latent lengths, words and codes, the length rule; it learns the
reversal task, with oracle latents as the upper bound."""

from __future__ import annotations

import pytest
import torch

from nargen.core import TransformerConfig
from nargen.data import read_split
from nargen.data.batching import pad_sequences
from nargen.models import LatentModule, load_module


def micro_latent(tokenizer, **options) -> LatentModule:
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, absolute_positions=True)
    return LatentModule(cfg, tokenizer, family_options={"codebook_size": 8, **options}).eval()


@pytest.mark.parametrize("compression", [1, 2, 3])
def test_each_sentence_gets_ceil_n_over_two_to_the_c_latents(tokenizer, compression):
    module = micro_latent(tokenizer, compression=compression)
    lengths = [1, 2, 5, 8, 9, 17]
    target = pad_sequences([torch.arange(6, 6 + n) for n in lengths], 0)
    encoded = module.model.encode(torch.full((len(lengths), 3), 7))
    _, mask = module.latent_states(encoded, target, target != 0)
    assert mask.sum(1).tolist() == [-(-n // 2 ** compression) for n in lengths]


def test_words_and_codes_are_inverse(tokenizer):
    module = micro_latent(tokenizer, groups=2)
    codes = torch.randint(0, 8, (4, 5, 2))
    words = module.words(codes)
    assert words.max() < 64 and torch.equal(module.codes(words), codes)


def test_gradients_reach_the_latent_encoder_through_the_quantizer(tokenizer):
    module = micro_latent(tokenizer).train()
    batch = {"src": torch.tensor([[7, 8, 9, 2]]), "tgt_in": torch.tensor([[1, 9, 8, 7, 0]])}
    module.loss(batch).backward()
    reader = [p.grad for p in module.latent_reader.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in reader)
    assert module.compress[0].weight.grad.abs().sum() > 0


def test_decoded_length_stays_inside_the_last_latent_chunk(tokenizer):
    module = micro_latent(tokenizer, compression=2)
    src = torch.full((3, 4), 7)
    out = module.decode_from_codes(src, module.model.encode(src), [[1], [1, 2, 3], [4, 5]])
    lengths = (out != 0).sum(1).tolist()
    for n, m in zip(lengths, [1, 3, 2]):
        assert 4 * (m - 1) < n <= 4 * m


@pytest.mark.slow
def test_latent_model_learns_to_reverse_and_oracle_latents_bound_the_prior(trained_latent, reversal_root):
    module = load_module(trained_latent, family="latent")
    test = read_split(reversal_root, "test", "src", "tgt")
    out = module.translate(test.source).texts
    prior_exact = sum(o == r for o, r in zip(out, test.target)) / len(test.target)
    ids = module.tokenizer
    src = pad_sequences([torch.tensor(x + [2]) for x in ids.encode(test.source)], 0).to(module.device)
    tgt = pad_sequences([torch.tensor(x) for x in ids.encode(test.target)], 0).to(module.device)
    words = module.oracle_words(src, tgt)
    oracle = ids.decode([[t for t in row if t] for row in
                         module.decode_from_codes(src, module.model.encode(src), words).tolist()])
    oracle_exact = sum(o == r for o, r in zip(oracle, test.target)) / len(test.target)
    assert oracle_exact >= 0.6, oracle_exact
    assert prior_exact >= 0.3, prior_exact
    assert oracle_exact >= prior_exact
    from nargen.diagnose import diagnose
    report = diagnose(module, test.source[:40], test.target[:40], max_tokens=300)
    rows = {r["latents"]: r for r in report["latent_sources"]}
    assert set(rows) == {"prior greedy", "prior beam 4", "prior greedy, oracle count", "oracle latents"}
    # held to the reference's latent count, the prior writes exactly that many latents
    assert rows["prior greedy, oracle count"]["mean_latents"] == rows["oracle latents"]["mean_latents"]
    counts = torch.tensor([len(w) for w in words], device=module.device)
    assert [len(w) for w in module.prior_words_of_count(src, counts)] == counts.tolist()
    assert [len(w) for w in module.prior_words_of_count(src, counts + 2)] == (counts + 2).tolist()
    assert rows["oracle latents"]["bleu"] >= rows["prior greedy"]["bleu"]
    # live codes: the share of each group's codebook the oracle latents of those 40 use
    # (two codes of slack: a latent on a near tie may pick another code in a batch)
    k, groups = module.options.codebook_size, module.options.groups
    first = module.codes(torch.tensor([w for row in module.oracle_words(src[:40], tgt[:40]) for w in row]))
    distinct = sum(len(set(first[:, g].tolist())) for g in range(groups)) / (groups * k)
    assert abs(rows["oracle latents"]["live_codes"] - distinct) <= 2 / k
    # passes are one sentence's alone: its latents, the prior's end step, the decoder pass;
    # the prior runs when held to the reference's count too
    assert rows["oracle latents"]["mean_passes"] == 1
    for name in ("prior greedy", "prior greedy, oracle count"):
        assert rows[name]["mean_passes"] == pytest.approx(rows[name]["mean_latents"] + 2, abs=0.011)
    greedy = rows["prior greedy"]
    for i in range(3):
        alone = module.generate(src[i:i + 1, : int((src[i] != 0).sum())])
        words, _ = module.prior_words(src[i:i + 1, : int((src[i] != 0).sum())])
        assert alone.passes == len(words[0]) + 2
    assert 0 < sum(b["sentences"] for b in greedy["bleu_by_length"]) <= 40


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [False, True])
def test_reranked_latent_candidates_give_the_rerankers_best(trained_latent, trained_run, reversal_root, sampling):
    """k latent sequences (the prior beam's k best, or k samples) are decoded; the output
    is the candidate the reranker scores highest, the same alone as in a batch."""
    from nargen.decoding import autoregressive_reranker

    latent = load_module(trained_latent, family="latent")
    ar = load_module(trained_run / "checkpoints" / "best.ckpt")
    rerank = autoregressive_reranker(ar.model, ar.ids)
    lines = read_split(reversal_root, "test", "src", "tgt").source[:8]
    src = latent.encode_batch(lines)
    draw = {"sampling": True, "temperature": 2.0, "seed": 3} if sampling else {}
    out = latent.generate(src, latent_beam=3, rerank=rerank, **draw)
    assert out.passes >= 3  # prior steps, the decoder pass, the reranker pass
    candidates, _ = latent.prior_candidates(src, 3, **draw)
    for i, words in enumerate(candidates):
        row = src[i : i + 1].expand(3, -1)
        tokens = latent.decode_from_codes(row, latent.model.encode(row), words)
        best = tokens[int(rerank(row, tokens).argmax())]
        assert out.as_lists(latent.ids.pad)[i] == [t for t in best.tolist() if t != latent.ids.pad]
    if not sampling:  # a draw depends on the batch's random stream; the beam does not
        alone = [latent.generate(src[i : i + 1], latent_beam=3, rerank=rerank).as_lists(latent.ids.pad)[0]
                 for i in range(len(lines))]
        assert alone == out.as_lists(latent.ids.pad)
