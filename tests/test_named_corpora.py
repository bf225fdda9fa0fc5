"""The field's corpora (IWSLT14 de-en, WMT14 en-de, WMT16 en-ro) download into aligned
``{split}.{lang}`` files: checked here against local archives shaped like the real ones,
served from a folder (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from nargen.data import CorpusError, read_split
from nargen.data.corpora import NAMED_CORPORA, NamedCorpus, download


def fake_text(member: str, lang: str, fmt: str, n: int) -> bytes:
    """``n`` text lines in the member's format; line i says which member and line it is,
    the same in both languages but for the language tag."""
    stem = re.sub(rf"\.{lang}(\.|$)", r"\1", member.rsplit("/", 1)[-1]).replace("-src", "").replace("-ref", "")
    text = [f"{lang} {stem} {i} ä" for i in range(1, n + 1)]
    if fmt == "tags":
        lines = ["<url>http://www.ted.com/talks/x</url>", "<keywords>talks</keywords>",
                 f"<title>{text[0]}</title>", f"<description>{text[1]}</description>",
                 *text[2:], "<reviewer></reviewer>"]
    elif fmt == "sgm":
        lines = ['<srcset setid="x">', '<doc docid="d">', *(f'<seg id="{i}"> {t} </seg>' for i, t in enumerate(text, 1)),
                 "</doc>", "</srcset>"]
    else:
        lines = text
    return ("\n".join(lines) + "\n").encode()


def build_mirror(corpus: NamedCorpus, folder: Path, n: int) -> NamedCorpus:
    """Archives with every member the corpus reads, in ``folder``; returns the corpus with
    their digests (as if known)."""
    members: dict[str, dict[str, bytes]] = {}
    for (split, lang), parts in corpus.files.items():
        for part in parts:
            members.setdefault(part.archive.name, {})[part.member] = fake_text(part.member, lang, part.format, n)
    folder.mkdir()
    digests = {}
    for name, files in members.items():
        path = folder / name
        if name.endswith(".zip"):
            with zipfile.ZipFile(path, "w") as archive:
                for member, data in files.items():
                    archive.writestr(member, data)
        else:
            with tarfile.open(path, "w:gz") as archive:
                for member, data in files.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        digests[name] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    files = {key: tuple(dataclasses.replace(p, archive=dataclasses.replace(p.archive, digest=digests[p.archive.name]))
                        for p in parts) for key, parts in corpus.files.items()}
    return dataclasses.replace(corpus, files=files)


@pytest.mark.parametrize("name,pair", [("iwslt14", ("de", "en")), ("wmt14", ("en", "de")), ("wmt16", ("en", "ro"))])
def test_named_corpus_downloads_into_aligned_splits(name, pair, tmp_path):
    corpus = build_mirror(NAMED_CORPORA[name], tmp_path / "mirror", n=50)
    written = download(corpus, tmp_path / "data", corpus.splits, list(pair), base_url=(tmp_path / "mirror").as_uri())
    assert len(written) == 2 * len(corpus.splits)
    for split in corpus.splits:
        text = read_split(tmp_path / "data", split, *pair)
        assert len(text) > 0
        for source, target in zip(text.source, text.target):
            assert source.split()[1:] == target.split()[1:]  # the same line of the same member
            assert "<" not in source and source.startswith(pair[0])
    assert download(corpus, tmp_path / "data", corpus.splits, list(pair)) == []  # all there


def test_iwslt14_holds_every_23rd_training_line_out_for_validation(tmp_path):
    corpus = build_mirror(NAMED_CORPORA["iwslt14"], tmp_path / "mirror", n=100)
    download(corpus, tmp_path / "data", ["train", "valid", "test"], ["de", "en"], base_url=(tmp_path / "mirror").as_uri())
    train = read_split(tmp_path / "data", "train", "de", "en").source
    valid = read_split(tmp_path / "data", "valid", "de", "en").source
    assert len(valid) == 100 // 23 and len(train) + len(valid) == 100  # title and description kept
    assert valid[0].endswith(" 23 ä") and not set(valid) & set(train)
    assert len(read_split(tmp_path / "data", "test", "de", "en")) == 5 * 100  # five TED sets joined


def test_wmt14_training_joins_its_three_corpora_in_order(tmp_path):
    corpus = build_mirror(NAMED_CORPORA["wmt14"], tmp_path / "mirror", n=10)
    download(corpus, tmp_path / "data", ["train"], ["en", "de"], base_url=(tmp_path / "mirror").as_uri())
    stems = [line.split()[1] for line in read_split(tmp_path / "data", "train", "en", "de").source]
    assert [stems[0], stems[10], stems[20]] == ["europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en"]


def test_a_known_digest_refuses_a_different_archive_and_unknown_ones_need_consent(tmp_path):
    real = NAMED_CORPORA["wmt14"]
    build_mirror(real, tmp_path / "mirror", n=5)  # archives the real digests do not match
    mirror = (tmp_path / "mirror").as_uri()
    with pytest.raises(CorpusError, match="no digest known for training-parallel-europarl-v7.tgz"):
        download(real, tmp_path / "data", ["train"], ["en", "de"], base_url=mirror)
    with pytest.raises(CorpusError, match="test-full.tgz: md5 mismatch"):
        download(real, tmp_path / "data", ["newstest2014"], ["en", "de"], base_url=mirror, allow_unchecked=True)
    assert not list((tmp_path / "data").glob("newstest2014*"))
    assert len(download(real, tmp_path / "data", ["newstest2013"], ["en", "de"], base_url=mirror,
                        allow_unchecked=True)) == 2


def test_a_missing_member_names_the_archive_and_what_it_holds(tmp_path):
    corpus = build_mirror(NAMED_CORPORA["wmt16"], tmp_path / "mirror", n=5)
    setimes = tmp_path / "mirror" / "en-ro.txt.zip"
    with zipfile.ZipFile(setimes, "w") as archive:
        archive.writestr("README", "nothing")
    stale = dataclasses.replace(corpus, files={k: tuple(dataclasses.replace(p, archive=dataclasses.replace(p.archive, digest=None))
                                                        for p in parts) for k, parts in corpus.files.items()})
    with pytest.raises(CorpusError, match=r"en-ro.txt.zip has no SETIMES.en-ro.en \(it holds README\)"):
        download(stale, tmp_path / "data", ["train"], ["en", "ro"], base_url=(tmp_path / "mirror").as_uri(),
                 allow_unchecked=True)
    assert not list((tmp_path / "data").glob("train*"))
