"""A corpus prepared once: ids equal the tokenizer's, opened again without re-encoding,
bad lines refused by file and line, batches served from the memory maps."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import nargen.data.prepared as prepared_module
from nargen.data import CorpusError, DataConfig, TranslationDataModule, read_parallel
from nargen.data.batching import TokenBudgetBatchSampler
from nargen.data.datamodule import batch_keys
from nargen.data.prepared import PreparedCorpus, TokenizerSpec, open_or_prepare, sample_pairs

from conftest import reversal_pairs, write_split


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 lines, and worker processes even for a small corpus."""
    monkeypatch.setattr(prepared_module, "CHUNK_LINES", 7)
    monkeypatch.setattr(prepared_module, "SINGLE_PROCESS_LINES", 0)


def awkward_corpus(folder: Path, gz: bool) -> tuple[Path, Path]:
    """Empty lines, CRLF, a byte-order mark and a last line without its newline."""
    src, tgt = reversal_pairs(60, 11)
    src[3], tgt[10] = "", ""
    src_bytes = ("\ufeff" + "\r\n".join(src)).encode()  # CRLF throughout, no final newline
    tgt_bytes = ("\n".join(tgt) + "\n").encode()
    paths = []
    for name, data in (("train.src", src_bytes), ("train.tgt", tgt_bytes)):
        path = folder / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("gz", [False, True])
def test_prepared_ids_are_the_tokenizers_line_for_line(tokenizer, tmp_path, small_chunks, gz):
    source, target = awkward_corpus(tmp_path, gz)
    corpus = open_or_prepare(source, target, tmp_path / "cache", TokenizerSpec(model=tokenizer), workers=2)
    text = read_parallel(source, target)
    assert len(corpus) == len(text) == 60
    for side, lines in (("source", text.source), ("target", text.target)):
        expected = tokenizer.encode(lines)
        assert [corpus.ids(side, i).tolist() for i in range(60)] == expected
        assert corpus.lengths(side).tolist() == [len(ids) for ids in expected]
    assert corpus.lengths("source")[3] == 0 and corpus.lengths("target")[10] == 0
    assert corpus.tokenizer.model_bytes == tokenizer.model_bytes


def test_opening_again_reads_no_text_and_a_changed_file_prepares_anew(tokenizer, tmp_path, monkeypatch):
    source, target = awkward_corpus(tmp_path, gz=False)
    spec = TokenizerSpec(model=tokenizer)
    first = open_or_prepare(source, target, tmp_path / "cache", spec)

    def refuse(*args, **kwargs):
        raise AssertionError("prepared again")

    with monkeypatch.context() as patch:
        patch.setattr(prepared_module, "prepare", refuse)
        again = open_or_prepare(source, target, tmp_path / "cache", spec)
    assert again.folder == first.folder and again.meta["sha256"] == first.meta["sha256"]
    target.write_text(target.read_text().replace("\n", " x\n", 1))
    changed = open_or_prepare(source, target, tmp_path / "cache", spec)
    assert changed.folder != first.folder and changed.meta["sha256"] != first.meta["sha256"]
    assert changed.ids("target", 0).tolist() == tokenizer.encode([read_parallel(source, target).target[0]])[0]


@pytest.mark.parametrize("tokenizer_given", [True, False])
def test_a_bad_line_deep_in_the_corpus_is_refused_by_file_and_line(tokenizer, tmp_path, small_chunks,
                                                                    tokenizer_given):
    src, tgt = reversal_pairs(100, 12)
    write_split(tmp_path, "train", src, tgt)
    data = (tmp_path / "train.tgt").read_bytes().split(b"\n")
    data[76] = b"broken \xff\xfe"  # line 77, in the eleventh chunk
    (tmp_path / "train.tgt").write_bytes(b"\n".join(data))
    spec = TokenizerSpec(model=tokenizer) if tokenizer_given else TokenizerSpec(vocab_size=36)
    with pytest.raises(CorpusError, match=r"train\.tgt:77: not valid UTF-8"):
        open_or_prepare(tmp_path / "train.src", tmp_path / "train.tgt", tmp_path / "cache", spec, workers=2)
    assert not [p for p in (tmp_path / "cache" / "prepared").iterdir() if p.is_dir()]  # nothing half-made


def test_misaligned_files_name_both_and_their_line_counts(tokenizer, tmp_path, small_chunks):
    src, tgt = reversal_pairs(50, 13)
    write_split(tmp_path, "train", src, tgt[:-3])
    with pytest.raises(CorpusError, match=r"train\.src has 50 lines, .*train\.tgt has 47 lines"):
        open_or_prepare(tmp_path / "train.src", tmp_path / "train.tgt", tmp_path / "cache",
                        TokenizerSpec(model=tokenizer))


def test_an_interrupted_preparation_leaves_nothing_behind(tokenizer, tmp_path, small_chunks, monkeypatch):
    src, tgt = reversal_pairs(100, 14)
    write_split(tmp_path, "train", src, tgt)
    calls = []

    def fail_on_the_fifth(job):
        calls.append(job[0])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(job)

    real = prepared_module._encode_chunk
    monkeypatch.setattr(prepared_module, "_encode_chunk", fail_on_the_fifth)
    args = (tmp_path / "train.src", tmp_path / "train.tgt", tmp_path / "cache", TokenizerSpec(model=tokenizer))
    with pytest.raises(KeyboardInterrupt):
        open_or_prepare(*args, workers=1)
    assert [p.name for p in (tmp_path / "cache" / "prepared").iterdir()] == [
        p.name for p in (tmp_path / "cache" / "prepared").glob("*.lock")]
    monkeypatch.setattr(prepared_module, "_encode_chunk", real)
    assert len(open_or_prepare(*args)) == 100


def test_tokenizer_sample_is_uniform_over_chunks_in_order_and_aligned(tmp_path, small_chunks):
    n = 700
    (tmp_path / "a").write_text("".join(f"{i}\n" for i in range(n)))
    (tmp_path / "b").write_text("".join(f"b{i}\n" for i in range(n)))
    tenths: Counter = Counter()
    for seed in range(200):
        src, tgt = sample_pairs(tmp_path / "a", tmp_path / "b", 35, seed)
        lines = [int(x) for x in src]
        assert len(set(lines)) == 35 and lines == sorted(lines)
        assert tgt == [f"b{x}" for x in src]
        tenths.update(line * 10 // n for line in lines)
    assert all(0.08 < tenths[t] / (200 * 35) < 0.12 for t in range(10)), tenths
    everything = sample_pairs(tmp_path / "a", tmp_path / "b", n + 1)
    assert everything[0] == [str(i) for i in range(n)]  # all of it, in order


def test_datamodule_trains_on_the_prepared_corpus_and_workers_serve_the_same_batches(reversal_root, tmp_path):
    config = DataConfig(corpus="reversal", root=str(reversal_root), src_lang="src", tgt_lang="tgt",
                        vocab_size=36, cache_dir=str(tmp_path), max_tokens=600, loader_workers=0)
    data = TranslationDataModule(config)
    data.setup()
    assert isinstance(data.train_set.corpus, PreparedCorpus)
    assert data.signature()["sha256"] == data.prepared.meta["sha256"]
    text = read_parallel(reversal_root / "train.src", reversal_root / "train.tgt")
    line, source, target = data.train_set[5]
    assert data.tokenizer.decode([source[:-1].tolist(), target.tolist()]) == [text.source[line], text.target[line]]
    in_process = [b["index"].tolist() for b in data.train_dataloader()]
    config.loader_workers = 2
    with_workers = TranslationDataModule(config)
    with_workers.setup()
    batches = list(with_workers.train_dataloader())
    assert [b["index"].tolist() for b in batches] == in_process
    first = next(iter(data.train_dataloader()))
    assert all(torch.equal(first[k], batches[0][k]) for k in first)


def test_each_rank_holds_only_its_share_of_the_batches(monkeypatch):
    lengths = np.array([1 + (i * 7) % 23 for i in range(3000)])
    whole = TokenBudgetBatchSampler(lengths, max_tokens=200, shuffle=True, seed=5)
    whole.set_epoch(2)
    all_batches = list(whole)
    shares = []
    for rank in range(3):
        monkeypatch.setattr("nargen.data.batching._world", lambda rank=rank: (3, rank))
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=200, shuffle=True, seed=5)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        order, bounds = sampler._rank_batches()
        assert len(order) <= len(lengths) // 3 + 200 and len(bounds) == len(all_batches) // 3
    assert len({len(s) for s in shares}) == 1  # ranks step together
    cut = all_batches[: len(all_batches) - len(all_batches) % 3]
    assert [b for i in range(len(shares[0])) for b in (shares[0][i], shares[1][i], shares[2][i])] == cut


def test_batch_keys_match_the_padded_cost_of_each_pair(reversal_root, tmp_path):
    data = TranslationDataModule(DataConfig(corpus="reversal", root=str(reversal_root), src_lang="src",
                                            tgt_lang="tgt", vocab_size=36, cache_dir=str(tmp_path)))
    data.setup()
    cost, tiebreak = batch_keys(data.train_set)
    for i in (0, 17, 999):
        _, source, target = data.train_set[i]
        assert cost[i] == max(len(source), len(target) + 1)
        assert tiebreak[i] == (len(target) << 16) | len(source)  # target first, then source
