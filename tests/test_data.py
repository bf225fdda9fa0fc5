"""Corpus reading, named corpora, tokenizer, batching, and the errors users see."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from nargen.data import (
    CorpusError, DataConfig, NAMED_CORPORA, Tokenizer, TranslationDataModule, download,
    read_lines, read_parallel, read_split, token_budget_batches, train_tokenizer,
)
from nargen.data.corpora import Archive, NamedCorpus, Part, plain_file_corpus
from nargen.data.datamodule import usable_lines
from nargen.data.tokenizer import BLANK, BOS, EOS, MASK, PAD, UNK

from conftest import reversal_pairs, write_split


def test_reads_plain_and_gzip_alike(tmp_path):
    text = "Ein Hund läuft.\r\nZwei Katzen\n\nδοκιμή 🙂\n"
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    with gzip.open(tmp_path / "a.txt.gz", "wb") as handle:
        handle.write(text.encode())
    expected = ["Ein Hund läuft.", "Zwei Katzen", "", "δοκιμή 🙂"]
    assert read_lines(tmp_path / "a.txt") == expected
    assert read_lines(tmp_path / "a.txt.gz") == expected


def test_last_line_without_newline_is_kept(tmp_path):
    (tmp_path / "a").write_text("one\ntwo")
    assert read_lines(tmp_path / "a") == ["one", "two"]


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    (tmp_path / "x.de").write_text("a\nb\nc\n")
    (tmp_path / "x.en").write_text("a\nb\n")
    with pytest.raises(CorpusError) as err:
        read_parallel(tmp_path / "x.de", tmp_path / "x.en")
    message = str(err.value)
    assert "x.de has 3 lines" in message and "x.en has 2 lines" in message


def test_non_utf8_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.de").write_bytes(b"fine\nalso fine\nbroken \xff\xfe here\n")
    with pytest.raises(CorpusError, match=r"bad\.de:3: not valid UTF-8"):
        read_lines(tmp_path / "bad.de")


def test_truncated_gzip_is_reported_by_name(tmp_path):
    data = gzip.compress(b"line\n" * 1000)
    (tmp_path / "cut.de.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="cut.de.gz"):
        read_lines(tmp_path / "cut.de.gz")


def test_missing_split_says_where_it_looked(tmp_path):
    with pytest.raises(CorpusError, match=r"no test_2017_mscoco\.en or test_2017_mscoco\.en\.gz"):
        read_split(tmp_path, "test_2017_mscoco", "en", "fr")


def test_any_pair_and_split_by_name(tmp_path):
    write_split(tmp_path, "test_2018_flickr", ["bonjour"], ["dobrý den"], langs=("fr", "cs"))
    pair = read_split(tmp_path, "test_2018_flickr", "fr", "cs")
    assert (pair.source, pair.target) == (["bonjour"], ["dobrý den"])


def test_empty_and_overlong_pairs_are_dropped_together_and_reported(tokenizer, tmp_path, caplog):
    src = ["ka lo", "", "mi nu", " ".join(["ka"] * 50), "pe ro"]
    tgt = ["lo ka", "nu mi", "", "x", "ro pe"]
    write_split(tmp_path, "train", src, tgt)
    write_split(tmp_path, "val", ["ka"], ["ka"])
    (tmp_path / "spm.model").write_bytes(tokenizer.model_bytes)
    dm = TranslationDataModule(DataConfig(
        corpus="tiny", root=str(tmp_path), src_lang="src", tgt_lang="tgt",
        tokenizer=str(tmp_path / "spm.model"), max_len=20))
    with caplog.at_level("WARNING"):
        dm.setup()
    items = [dm.train_set[i] for i in range(len(dm.train_set))]
    assert [line for line, _, _ in items] == [0, 4]
    assert tokenizer.decode([s[:-1].tolist() for _, s, _ in items]) == ["ka lo", "pe ro"]
    assert tokenizer.decode([t.tolist() for _, _, t in items]) == ["lo ka", "ro pe"]  # alignment kept
    assert "2 empty (lines 2, 3); 1 too long (lines 4)" in caplog.text
    kept, dropped = usable_lines(np.array([2, 0, 2, 50, 2]), np.array([2, 2, 0, 1, 2]), max_len=20)
    assert kept.tolist() == [0, 4] and dropped == {"empty": [2, 3], "too_long": [4]}


def test_tokenizer_reserves_ids_and_round_trips(tokenizer):
    pieces = [tokenizer.processor.id_to_piece(i) for i in (PAD, BOS, EOS, UNK, MASK, BLANK)]
    assert pieces == ["<pad>", "<s>", "</s>", "<unk>", "<mask>", "<blank>"]
    text = ["ka lo mi", "za bu"]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert Tokenizer(tokenizer.model_bytes).encode(text) == tokenizer.encode(text)


def test_tokenizer_cache_is_keyed_by_training_text(tmp_path):
    src, tgt = reversal_pairs(500, 5)
    first = train_tokenizer(src + tgt, 36, tmp_path)
    again = train_tokenizer(src + tgt, 36, tmp_path)
    assert again.model_bytes == first.model_bytes
    assert len(list(tmp_path.glob("*.model"))) == 1
    other_src, other_tgt = reversal_pairs(500, 6)
    train_tokenizer(other_src + other_tgt, 36, tmp_path)
    assert len(list(tmp_path.glob("*.model"))) == 2


def test_token_budget_batches_cover_everything_within_budget():
    lengths = [((i * 37) % 23) + 1 for i in range(500)]
    batches = token_budget_batches(lengths, max_tokens=64, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(max(lengths[i] for i in b) * len(b) <= 64 for b in batches)
    assert batches == token_budget_batches(lengths, max_tokens=64, seed=3)
    assert batches != token_budget_batches(lengths, max_tokens=64, seed=4)


def test_item_longer_than_budget_gets_its_own_batch():
    assert [len(b) for b in token_budget_batches([100, 1, 1], max_tokens=10)] == [2, 1]
    assert token_budget_batches([], max_tokens=10, seed=1) == []


def test_datamodule_batches_shift_targets(reversal_root, tmp_path):
    dm = TranslationDataModule(DataConfig(corpus="reversal", root=str(reversal_root), src_lang="src",
                                          tgt_lang="tgt", vocab_size=36, cache_dir=str(tmp_path), max_tokens=200))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["src"].shape[0] * batch["src"].shape[1] <= 200
    real = batch["tgt_out"] != PAD
    assert (batch["tgt_in"][:, 0] == BOS).all()
    assert torch_equal(batch["tgt_in"][:, 1:][real[:, :-1]], batch["tgt_out"][:, :-1][real[:, :-1]])
    assert ((batch["tgt_out"] == EOS).sum(1) == 1).all()
    assert dm.signature()["pairs"] == 3000


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def _fake_remote(tmp_path: Path) -> tuple[Path, NamedCorpus]:
    remote = tmp_path / "remote"
    remote.mkdir()
    files = {}
    for lang, text in (("de", b"ein hund\n"), ("en", b"a dog\n")):
        data = gzip.compress(text)
        (remote / f"train.{lang}.gz").write_bytes(data)
        files[f"train.{lang}.gz"] = hashlib.sha256(data).hexdigest()
    return remote, plain_file_corpus("fake", remote.as_uri() + "/", files, "")


def test_download_fetches_verifies_and_skips_present_files(tmp_path):
    remote, corpus = _fake_remote(tmp_path)
    fetched = download(corpus, tmp_path / "local", ["train"], ["de", "en"])
    assert [p.name for p in fetched] == ["train.de.gz", "train.en.gz"]
    assert read_split(tmp_path / "local", "train", "de", "en").target == ["a dog"]
    assert download(corpus, tmp_path / "local", ["train"], ["de", "en"]) == []


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    remote, corpus = _fake_remote(tmp_path)
    bad = plain_file_corpus("fake", remote.as_uri() + "/", {"train.de.gz": "0" * 64}, "")
    with pytest.raises(CorpusError, match="sha256 mismatch"):
        download(bad, tmp_path / "local", ["train"], ["de"])
    assert [p for p in (tmp_path / "local").rglob("*") if p.is_file()] == []


def test_download_failure_names_the_url(tmp_path):
    _, corpus = _fake_remote(tmp_path)
    missing = NamedCorpus("fake", {("train", "fr"): (Part(Archive(corpus.files[("train", "de")][0].archive.url.replace(".de.", ".fr."))),)})
    with pytest.raises(CorpusError, match="download of .*train.fr.gz failed"):
        download(missing, tmp_path / "local", ["train"], ["fr"], allow_unchecked=True)


def test_download_refuses_files_without_a_checksum_before_fetching_any(tmp_path):
    _, corpus = _fake_remote(tmp_path)
    mixed = NamedCorpus("fake", {**corpus.files, ("train", "fr"): (Part(Archive("file:///nowhere/train.fr.gz")),)})
    with pytest.raises(CorpusError, match="no digest known for train.fr.gz"):
        download(mixed, tmp_path / "local", ["train"], ["de", "fr"])
    assert not (tmp_path / "local").exists()  # not even the checked German file
    with pytest.raises(CorpusError, match="fake has no train.cs .*languages: de, en, fr"):
        download(mixed, tmp_path / "local", ["train"], ["cs"])


def test_multi30k_is_registered_with_checksums():
    corpus = NAMED_CORPORA["multi30k"]
    part, = corpus.files[("test_2016_flickr", "de")]
    assert part.archive.name == "test_2016_flickr.de.gz" and part.archive.digest.startswith("sha256:")


@pytest.mark.skipif(not Path("../shared/data/multi30k").is_dir(), reason="no local Multi30K copy")
def test_local_multi30k_matches_known_checksums():
    from nargen.data.corpora import sha256_of

    root = Path("../shared/data/multi30k")
    corpus = NAMED_CORPORA["multi30k"]
    for (part,) in corpus.files.values():
        assert "sha256:" + sha256_of(root / part.archive.name) == part.archive.digest, part.archive.name
    pair = read_split(root, "test_2016_flickr", "de", "en")
    assert len(pair) == 1000
