"""Speculative decoding reproduces the autoregressive model's greedy output exactly,
whatever the drafter proposes, batched, with its cache rolled back correctly."""

from __future__ import annotations

import pytest
import torch

from nargen.core import KVCache
from nargen.data import read_split
from nargen.data.batching import pad_sequences
from nargen.decoding import SpecialIds, greedy
from nargen.decoding.speculative import (
    AutoregressiveDrafter, OnePassDrafter, ParallelDrafter, aligned_continuation, speculative,
)
from nargen.models import load_module


class ListDrafter:
    """Proposes fixed tokens (e.g. the right answer with planted mistakes)."""

    def __init__(self, proposals):
        self.proposals, self.passes = proposals, 0

    def start(self, src):
        pass

    def propose(self, rows, prefixes, k):
        self.passes += 1
        return [self.proposals(r, p, k) for r, p in zip(rows, prefixes)]


def test_truncate_forgets_later_positions():
    cache = KVCache(1)
    k = torch.randn(2, 1, 5, 4)
    cache.append(0, k, k.clone())
    cache.advance(5)
    cache.truncate(3)
    assert cache.length == 3 and torch.equal(cache.keys[0], k[:, :, :3])
    with pytest.raises(ValueError):
        cache.truncate(4)


EOS = 2


def test_a_right_draft_is_continued_exactly_at_every_prefix():
    draft = [5, 6, 5, 6, 7, 5, 6, 8]  # repeated n-grams: the nearest occurrence wins
    for cut in range(len(draft) + 1):
        for k in (1, 3, 20):
            expected = draft[cut : cut + k]
            expected += [EOS] if len(expected) < k else []
            assert aligned_continuation(draft, draft[:cut], k, EOS) == expected


def test_the_continuation_follows_a_substitution_an_insertion_and_a_deletion():
    draft = [10, 11, 12, 13, 14, 15]
    assert aligned_continuation(draft, [10, 11, 99], 2, EOS) == [13, 14]  # 99 replaced 12
    assert aligned_continuation(draft, [10, 11, 99, 12], 2, EOS) == [13, 14]  # 99 inserted
    assert aligned_continuation(draft, [10, 11, 13], 2, EOS) == [14, 15]  # 12 skipped
    assert aligned_continuation(draft, [10, 11, 13, 14, 15], 3, EOS) == [EOS]
    assert aligned_continuation([], [4, 5], 3, EOS) == [EOS]


@pytest.fixture(scope="module")
def ar_and_sources(trained_run, reversal_root):
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    test = read_split(reversal_root, "test", "src", "tgt")
    rows = [torch.tensor(x + [module.ids.eos]) for x in module.tokenizer.encode(test.source[:24])]
    return module, pad_sequences(rows, module.ids.pad).to(module.device)


def settings(module):
    return module.decoder_settings()


@pytest.mark.slow
@pytest.mark.parametrize("block", [1, 3, 6])
def test_output_equals_greedy_with_a_drafter_that_is_right_then_wrong(ar_and_sources, block):
    module, src = ar_and_sources
    reference = greedy(module.model, src, **settings(module))
    truth = reference.as_lists(module.ids.pad)

    def proposals(row, prefix, k):  # right for a while, then a wrong token, per sentence
        rest = truth[row][len(prefix):] + [module.ids.eos]
        cut = (row + len(prefix)) % (k + 1)
        return rest[:cut] + [7] * (k - cut)

    drafter = ListDrafter(proposals)
    out = speculative(module.model, src, drafter, block=block, **settings(module))
    assert out.as_lists(module.ids.pad) == truth
    assert torch.equal(out.hit_cap, reference.hit_cap)
    assert 0 < out.counts["accepted"] < out.counts["proposed"]  # sentences accept different lengths


@pytest.mark.parametrize("rows_left, check_every", [(1, 1), (5, 1), (23, 1), (5, 8), (23, 3)])
def test_a_batch_decoded_greedily_until_few_sentences_are_left_then_drafted_gives_greedy_output(
        ar_and_sources, rows_left, check_every):
    """Reading which sentences have ended every pass, or every few (as on a GPU)."""
    module, src = ar_and_sources
    reference = greedy(module.model, src, **settings(module))
    truth = reference.as_lists(module.ids.pad)
    asked: list[list[int]] = []

    def proposals(row, prefix, k):  # right for a while, then a wrong token, per sentence
        rest = truth[row][len(prefix):] + [module.ids.eos]
        cut = (row + len(prefix)) % (k + 1)
        return rest[:cut] + [7] * (k - cut)

    class Recording(ListDrafter):
        def propose(self, rows, prefixes, k):
            asked.append(list(rows))
            return super().propose(rows, prefixes, k)

    out = speculative(module.model, src, Recording(proposals), block=3, draft_at_rows=rows_left,
                      check_every=check_every, **settings(module))
    assert out.as_lists(module.ids.pad) == truth
    assert torch.equal(out.hit_cap, reference.hit_cap)
    assert all(len(rows) <= rows_left for rows in asked) and (asked or rows_left == 1)
    assert out.counts["emitted"] == sum(len(t) + 1 for t in truth)  # every token and each EOS, once


@pytest.mark.slow
def test_the_model_drafting_for_itself_is_always_accepted(ar_and_sources):
    module, src = ar_and_sources
    reference = greedy(module.model, src, **settings(module))
    out = speculative(module.model, src, AutoregressiveDrafter(module.model, module.ids), block=4,
                      **settings(module))
    assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert out.counts["accepted"] >= 0.95 * out.counts["proposed"]
    # up to 5 tokens (4 drafted + 1 own) per verification pass
    longest = max(len(r) for r in reference.as_lists(module.ids.pad)) + 1
    assert out.counts["target_passes"] <= -(-longest // 5) + 1 < reference.passes


@pytest.mark.slow
def test_the_cached_drafter_drafts_what_the_model_drafts_without_a_cache(ar_and_sources):
    module, src = ar_and_sources
    model, ids = module.model, module.ids
    truth = greedy(model, src, **settings(module)).as_lists(ids.pad)
    encoded = model.encode(src)

    def uncached(row, prefix, k):  # one sentence, whole prefix each pass
        seq, out = [ids.bos, *prefix], []
        while len(out) < k and ids.eos not in out:
            device = src.device
            logits = model.decode(torch.tensor([seq], device=device),
                                  encoded.index_select(torch.tensor([row], device=device)), causal=True)
            logits[..., [ids.pad, ids.bos]] = float("-inf")
            out.append(int(logits[0, -1].argmax()))
            seq.append(out[-1])
        return out

    drafter = AutoregressiveDrafter(model, ids)
    drafter.start(src)
    rows = list(range(src.shape[0]))
    for step in range(5):
        if step == 3:
            rows = rows[::2]  # finished sentences leave the batch
        # accepted prefixes of different lengths, some ending in a token the draft did not propose
        prefixes = [truth[r][: step * (1 + r % 3)] + ([9] if (r + step) % 4 == 0 else []) for r in rows]
        assert drafter.propose(rows, prefixes, 4) == [uncached(r, p, 4) for r, p in zip(rows, prefixes)]


@pytest.mark.slow
def test_a_parallel_drafter_gives_the_same_output_in_fewer_target_passes(ar_and_sources, trained_cmlm):
    module, src = ar_and_sources
    reference = greedy(module.model, src, **settings(module))
    drafter = ParallelDrafter(load_module(trained_cmlm))
    out = module.generate(src, draft=drafter, block=4)
    assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert out.counts["target_passes"] < reference.passes
    assert out.counts["draft_passes"] == out.counts["target_passes"]


@pytest.mark.slow
def test_a_one_pass_drafter_drafts_once_per_batch(ar_and_sources, trained_ctc):
    module, src = ar_and_sources
    reference = greedy(module.model, src, **settings(module))
    longest = max(len(r) for r in reference.as_lists(module.ids.pad)) + 1
    # the model's own greedy output as the draft: every block is accepted whole
    own = module.generate(src, draft=OnePassDrafter(module), block=4)
    assert own.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert own.counts["accepted"] == own.counts["proposed"]
    assert own.counts["target_passes"] == -(-longest // 5) and own.counts["draft_passes"] == reference.passes
    # a CTC model's single pass drafts for the whole batch
    out = module.generate(src, draft=OnePassDrafter(load_module(trained_ctc)), block=6)
    assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
    assert out.counts["draft_passes"] == 1 and out.counts["target_passes"] < reference.passes


@pytest.mark.slow
def test_evaluate_command_reports_acceptance(trained_run, trained_cmlm, reversal_root, capsys):
    from nargen.cli.main import main
    import json

    code = main(["evaluate", "--ckpt", str(trained_run / "checkpoints" / "best.ckpt"),
                 "--draft_ckpt", str(trained_cmlm), "--block", "3", "--json",
                 "--src", str(reversal_root / "test.src"), "--ref", str(reversal_root / "test.tgt"),
                 "--latency_sentences", "3"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    # a NAT/CMLM drafter runs one pass per verification pass
    assert record["draft_passes"] == record["target_passes"] > 0
    # the batch-1 figures are those of the first 3 sentences decoded alone
    module, drafter = load_module(trained_run / "checkpoints" / "best.ckpt"), ParallelDrafter(load_module(trained_cmlm))
    counts = {"accepted": 0, "proposed": 0, "target_passes": 0, "draft_passes": 0, "emitted": 0, "verified": 0}
    for line in read_split(reversal_root, "test", "src", "tgt").source[:3]:
        one = module.translate([line], draft=drafter, block=3)
        for key in counts:
            counts[key] += one.counts[key]
    assert record["batch1_draft_acceptance"] == round(counts["accepted"] / counts["proposed"], 4)
    assert record["batch1_target_passes"] == record["batch1_draft_passes"] == round(counts["target_passes"] / 3, 2)
    assert record["batch1_tokens_per_pass"] == round(counts["emitted"] / counts["verified"], 2) > 1
    assert 0 < record["batch1_draft_time_share"] < 1
    # each sentence decoded alone gives what it gave in its batch (greedy's output both times)
    assert record["batch1_differ_from_batched"] == 0 and record["batch1_compiled_passes"] == 0


def _model_that_runs_to_its_cap(max_len: int, seed: int) -> torch.nn.Module:
    """A random-weight model whose EOS logit is always 0 (its embedding zeroed), below the
    best of 37 other random logits: greedy decoding runs to the length cap."""
    from nargen.core import Seq2SeqTransformer, TransformerConfig

    torch.manual_seed(seed)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=40, max_len=max_len)).eval()
    with torch.no_grad():
        model.embed.weight[EOS].zero_()
    return model


def _sources_with_a_cap_at_max_len(max_len: int) -> torch.Tensor:
    """Row 0: a source whose cap (1.5 * length + 10) is clipped to max_len - 1; then short ones."""
    g = torch.Generator().manual_seed(5)
    lengths = [max_len - 8, 3, 5, 2]
    rows = [torch.cat([torch.randint(3, 40, (n - 1,), generator=g), torch.tensor([EOS])]) for n in lengths]
    return pad_sequences(rows, 0)


@pytest.mark.parametrize("block", range(1, 9))
def test_speculative_output_equals_greedy_when_a_cap_reaches_max_len(block: int) -> None:
    max_len = 32
    model = _model_that_runs_to_its_cap(max_len, seed=0)
    src = _sources_with_a_cap_at_max_len(max_len)
    settings = {"max_len": max_len}
    for rows in ([0], [0, 1, 2, 3]):  # alone, and in a batch with short sentences
        reference = greedy(model, src[rows], **settings)
        truth = reference.as_lists(0)
        assert len(truth[0]) == max_len - 1 and bool(reference.hit_cap[0])  # the long row fills the model

        def right_then_past_the_cap(row, prefix, k):  # the right tokens, then more than fit
            return (truth[row][len(prefix):] + [7] * k)[:k]

        def wrong_every_third(row, prefix, k):
            rest = truth[row][len(prefix):] + [7] * k
            return [t if (len(prefix) + j) % 3 else 8 for j, t in enumerate(rest[:k])]

        own = AutoregressiveDrafter(model, SpecialIds(), max_len=max_len)
        # a drafter holding fewer positions than the source has tokens: it reads what fits
        shorter = AutoregressiveDrafter(_model_that_runs_to_its_cap(16, seed=1), SpecialIds(), max_len=16)
        for drafter in (ListDrafter(right_then_past_the_cap), ListDrafter(wrong_every_third), own, shorter):
            out = speculative(model, src[rows], drafter, block=block, **settings)
            assert out.as_lists(0) == truth, (block, rows, drafter)
            assert torch.equal(out.hit_cap, reference.hit_cap)


@pytest.mark.slow
def test_translate_with_a_drafter_takes_a_line_as_long_as_the_model(trained_run, trained_cmlm, tmp_path):
    """A line cut to the model's maximum has a cap at ``max_len - 1``: with a drafter it
    translates to what plain greedy gives, at every block size."""
    from nargen.cli.main import main

    source = tmp_path / "long.src"
    source.write_text(" ".join(["ka", "lo", "mi", "nu", "pe", "ro", "su"] * 12) + "\nza bu\n", encoding="utf-8")
    ckpt = str(trained_run / "checkpoints" / "best.ckpt")
    plain = tmp_path / "plain.out"
    assert main(["translate", "--ckpt", ckpt, "-i", str(source), "-o", str(plain)]) == 0
    for block in (1, 4, 8):
        drafted = tmp_path / f"drafted{block}.out"
        assert main(["translate", "--ckpt", ckpt, "--draft_ckpt", str(trained_cmlm), "--block", str(block),
                     "-i", str(source), "-o", str(drafted)]) == 0
        assert drafted.read_text(encoding="utf-8") == plain.read_text(encoding="utf-8")
