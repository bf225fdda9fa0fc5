"""Named corpora: where their text comes from, how it becomes ``{split}.{lang}`` files in a
local folder, and how those files are found.

A named corpus lists, for every split and language, the parts its lines come from: a
downloaded file, or a member of a downloaded archive, read as plain lines, WMT's SGML
(``<seg>`` lines) or IWSLT's tagged TED transcripts. ``download`` fetches each archive
once (checked against its digest where one is known, refused otherwise unless asked),
then writes every split as plain ``{split}.{lang}`` text, which is all the rest of nargen
reads.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from nargen.data.corpus import CorpusError, ParallelText, read_parallel

DATA_ENV = "NARGEN_DATA"


@dataclass(frozen=True)
class Archive:
    """A file to download: a text file (maybe gzipped) or a tar/zip archive."""

    url: str
    digest: str | None = None
    """``sha256:HEX`` or ``md5:HEX`` of the file as downloaded (None: not known)."""

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Part:
    """Some lines of one language of a split."""

    archive: Archive
    member: str | None = None
    """Path inside the archive (None: the downloaded file is the text itself)."""
    format: str = "plain"
    """plain (a line each), sgm (WMT/IWSLT ``<seg>`` lines) or tags (IWSLT training
    transcripts: markup lines dropped, titles and descriptions kept as text)."""
    every: int = 0
    """Keep only lines whose 1-based number is a multiple of this (0: all)."""
    skip_every: int = 0
    """Drop lines whose 1-based number is a multiple of this (0: none)."""


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus nargen can fetch: for each ``(split, lang)``, the parts of its lines."""

    name: str
    files: dict[tuple[str, str], tuple[Part, ...]]
    about: str = ""
    """Its usual use, and where nargen's version departs from the common preprocessing."""

    @property
    def splits(self) -> list[str]:
        return sorted({split for split, _ in self.files})

    @property
    def langs(self) -> list[str]:
        return sorted({lang for _, lang in self.files})


def plain_file_corpus(name: str, base_url: str, digests: dict[str, str], about: str) -> NamedCorpus:
    """A corpus served as ``{split}.{lang}.gz`` files under one URL."""
    files = {}
    for filename, digest in digests.items():
        split, lang, _ = filename.rsplit(".", 2)
        files[(split, lang)] = (Part(Archive(base_url + filename, "sha256:" + digest)),)
    return NamedCorpus(name, files, about)


MULTI30K = plain_file_corpus(
    "multi30k", "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/",
    {  # the repository's raw files, as checked against local copies
        "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    },
    "Multi30K task 1 (29k image captions), German-English; test_2016_flickr is the usual test set.",
)

_IWSLT14 = Archive("http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz")
_IWSLT14_TEST = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                 "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
IWSLT14_DE_EN = NamedCorpus(
    "iwslt14",
    {
        **{("train", lang): (Part(_IWSLT14, f"de-en/train.tags.de-en.{lang}", "tags", skip_every=23),)
           for lang in ("de", "en")},
        **{("valid", lang): (Part(_IWSLT14, f"de-en/train.tags.de-en.{lang}", "tags", every=23),)
           for lang in ("de", "en")},
        **{("test", lang): tuple(Part(_IWSLT14, f"de-en/{name}.de-en.{lang}.xml", "sgm")
                                 for name in _IWSLT14_TEST)
           for lang in ("de", "en")},
    },
    "IWSLT14 German-English TED talks as fairseq's prepare-iwslt14.sh splits them: every 23rd "
    "training line is held out for validation, the test set joins dev2010, dev2012 and tst2010-2012. "
    "nargen keeps the raw text (no Moses tokenization, lowercasing or length cleaning), so the "
    "splits hold a few more lines than fairseq's (about 174k training pairs before length filtering).",
)

_WMT14 = {
    "europarl": Archive("https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz"),
    "commoncrawl": Archive("https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"),
    "news": Archive("https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz"),
    "dev": Archive("https://www.statmt.org/wmt14/dev.tgz"),
    # digest as sacreBLEU records it for wmt14/full
    "test": Archive("https://statmt.org/wmt14/test-full.tgz", "md5:a8cd784e006feb32ac6f3d9ec7eb389a"),
}
WMT14_EN_DE = NamedCorpus(
    "wmt14",
    {
        **{("train", lang): (
            Part(_WMT14["europarl"], f"training/europarl-v7.de-en.{lang}"),
            Part(_WMT14["commoncrawl"], f"commoncrawl.de-en.{lang}"),
            Part(_WMT14["news"], f"training/news-commentary-v9.de-en.{lang}"),
        ) for lang in ("de", "en")},
        **{("newstest2013", lang): (Part(_WMT14["dev"], f"dev/newstest2013.{lang}"),)
           for lang in ("de", "en")},
        ("newstest2014", "en"): (Part(_WMT14["test"], "test-full/newstest2014-deen-src.en.sgm", "sgm"),),
        ("newstest2014", "de"): (Part(_WMT14["test"], "test-full/newstest2014-deen-ref.de.sgm", "sgm"),),
    },
    "WMT14 English-German: Europarl v7, Common Crawl and News Commentary v9 (4.5M pairs), "
    "newstest2013 to validate, newstest2014 (full, 3,003 sentences) to test, as in the "
    "Transformer paper and most NAT papers.",
)

_WMT16 = {
    "europarl": Archive("https://data.statmt.org/wmt16/translation-task/training-parallel-ep-v8.tgz"),
    "setimes": Archive("https://object.pouta.csc.fi/OPUS-SETIMES/v2/moses/en-ro.txt.zip"),
    # digests as sacreBLEU records them for wmt16/dev and wmt16
    "dev": Archive("https://data.statmt.org/wmt16/translation-task/dev.tgz", "md5:4a3dc2760bb077f4308cce96b06e6af6"),
    "test": Archive("https://data.statmt.org/wmt16/translation-task/test.tgz", "md5:3d809cd0c2c86adb2c67034d15c4e446"),
}
WMT16_EN_RO = NamedCorpus(
    "wmt16",
    {
        **{("train", lang): (
            Part(_WMT16["europarl"], f"training-parallel-ep-v8/europarl-v8.ro-en.{lang}"),
            Part(_WMT16["setimes"], f"SETIMES.en-ro.{lang}"),
        ) for lang in ("en", "ro")},
        ("newsdev2016", "en"): (Part(_WMT16["dev"], "dev/newsdev2016-enro-src.en.sgm", "sgm"),),
        ("newsdev2016", "ro"): (Part(_WMT16["dev"], "dev/newsdev2016-enro-ref.ro.sgm", "sgm"),),
        ("newstest2016", "en"): (Part(_WMT16["test"], "test/newstest2016-enro-src.en.sgm", "sgm"),),
        ("newstest2016", "ro"): (Part(_WMT16["test"], "test/newstest2016-enro-ref.ro.sgm", "sgm"),),
    },
    "WMT16 English-Romanian: Europarl v8 and SETIMES2 (about 0.6M pairs), newsdev2016 to "
    "validate, newstest2016 to test. Romanian diacritics are kept as written (some NAT papers "
    "normalise and strip them, following Sennrich et al.'s WMT16 scripts).",
)

NAMED_CORPORA: dict[str, NamedCorpus] = {
    corpus.name: corpus for corpus in (MULTI30K, IWSLT14_DE_EN, WMT14_EN_DE, WMT16_EN_RO)
}


def default_root(corpus: str) -> Path:
    """``$NARGEN_DATA`` if set, else ``data/<corpus>`` under the current directory."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path("data") / corpus


def find_split_file(root: Path, split: str, lang: str) -> Path:
    """``root/{split}.{lang}`` or its ``.gz``; raises ``CorpusError`` when neither exists."""
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (root / name).is_file():
            return root / name
    raise CorpusError(
        f"{root}: no {split}.{lang} or {split}.{lang}.gz "
        f"(set --data.root or ${DATA_ENV}, or run `nargen download`)"
    )


def read_split(root: str | Path, split: str, src_lang: str, tgt_lang: str) -> ParallelText:
    """Read split ``split`` of the pair ``src_lang``-``tgt_lang`` from folder ``root``."""
    root = Path(root)
    return read_parallel(
        find_split_file(root, split, src_lang), find_split_file(root, split, tgt_lang)
    )


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def download(
    corpus: NamedCorpus,
    root: str | Path,
    splits: list[str],
    langs: list[str],
    base_url: str | None = None,
    allow_unchecked: bool = False,
) -> list[Path]:
    """Write ``root/{split}.{lang}`` for each split and language that is not there yet.

    Each archive is fetched once into ``root/.downloads`` and checked against its digest
    (a mismatch deletes it and raises); an archive without a known digest is refused
    before anything is fetched, unless ``allow_unchecked``. Files are written under a
    temporary name and renamed, so an interrupted download or extraction never leaves a
    truncated file behind. ``base_url``: a mirror holding the same file names. Returns
    the split files written.
    """
    root = Path(root)
    wanted = []
    for split in splits:
        for lang in langs:
            if (split, lang) not in corpus.files:
                raise CorpusError(f"{corpus.name} has no {split}.{lang} (splits: {', '.join(corpus.splits)}; "
                                  f"languages: {', '.join(corpus.langs)})")
            if not any((root / f"{split}.{lang}{ext}").exists() for ext in ("", ".gz")):
                wanted.append((split, lang))
    archives = list(dict.fromkeys(part.archive for key in wanted for part in corpus.files[key]))
    unchecked = [a.name for a in archives if a.digest is None]
    if unchecked and not allow_unchecked:
        raise CorpusError(
            f"{corpus.name}: no digest known for {', '.join(unchecked)}; "
            f"fetch unchecked with --allow-unchecked"
        )
    root.mkdir(parents=True, exist_ok=True)
    local = {archive: _fetch(archive, root / ".downloads", base_url) for archive in archives}
    written = []
    for split, lang in wanted:
        written.append(_write_split_file(corpus.files[(split, lang)], local, root, f"{split}.{lang}"))
    return written


def _write_split_file(parts: tuple[Part, ...], local: dict[Archive, Path], root: Path, name: str) -> Path:
    """``root/name`` from its parts (a single plain download is copied as it is, gzip and
    all), through a ``.part`` file that a failure removes."""
    single = parts[0] if len(parts) == 1 else None
    if single and single.member is None and single.format == "plain" and not (single.every or single.skip_every):
        downloaded = local[single.archive]
        target = root / (name + (".gz" if downloaded.suffix == ".gz" else ""))
        shutil.copyfile(downloaded, target.with_name(target.name + ".part"))
    else:
        target = root / name
        try:
            with open(target.with_name(target.name + ".part"), "wb") as out:
                for part in parts:
                    for line in part_lines(part, local[part.archive]):
                        out.write(line.encode("utf-8") + b"\n")
        except BaseException:
            target.with_name(target.name + ".part").unlink(missing_ok=True)
            raise
    target.with_name(target.name + ".part").replace(target)
    return target


def _fetch(archive: Archive, folder: Path, base_url: str | None) -> Path:
    """The downloaded archive in ``folder`` (fetched and checked unless already there)."""
    target = folder / archive.name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + archive.name if base_url else archive.url
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except Exception as err:  # noqa: BLE001 - any failure is reported by URL
            tmp_path.unlink(missing_ok=True)
            raise CorpusError(f"download of {url} failed: {err}") from err
    if archive.digest is not None:
        algorithm, expected = archive.digest.split(":", 1)
        if file_digest(tmp_path, algorithm) != expected:
            tmp_path.unlink()
            raise CorpusError(f"{url}: {algorithm} mismatch (expected {expected}); file discarded")
    tmp_path.replace(target)
    return target


def part_lines(part: Part, path: Path) -> Iterator[str]:
    """The text lines a part contributes, streamed from its downloaded file ``path``."""
    name = f"{path}:{part.member}" if part.member else str(path)
    with _open_member(path, part.member) as handle:
        lines = _FORMATS[part.format](_decoded(handle, name))
        for number, line in enumerate(lines, start=1):
            if part.every and number % part.every:
                continue
            if part.skip_every and number % part.skip_every == 0:
                continue
            yield line


def _decoded(handle: BinaryIO, name: str) -> Iterator[str]:
    """UTF-8 lines without their line ends (a leading byte-order mark dropped); a line
    that is not UTF-8 raises naming ``name`` and its number."""
    for number, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise CorpusError(f"{name}:{number}: not valid UTF-8") from err
        yield line.rstrip("\r\n")


@contextlib.contextmanager
def _open_member(path: Path, member: str | None) -> Iterator[BinaryIO]:
    """A downloaded file (gunzipped) or one member of a tar or zip archive, as a stream."""
    if member is None:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            yield handle
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if member not in archive.namelist():
                raise CorpusError(f"{path} has no {member} (it holds {', '.join(archive.namelist()[:20])})")
            with archive.open(member) as handle:
                yield handle
    else:
        with tarfile.open(path, "r:*") as archive:
            try:
                handle = archive.extractfile(member)
            except KeyError:
                names = archive.getnames()
                raise CorpusError(f"{path} has no {member} (it holds {', '.join(names[:20])})") from None
            yield handle


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")
_UNWRAP = re.compile(r"</?(title|description)>")


def _sgm_lines(lines: Iterator[str]) -> Iterator[str]:
    """The text of each ``<seg>`` line, whitespace collapsed (as sacreBLEU reads them)."""
    return (" ".join(m.group(1).split()) for line in lines if (m := _SEG.search(line)))


def _tagged_lines(lines: Iterator[str]) -> Iterator[str]:
    """IWSLT training transcripts: markup lines (url, talkid, keywords, speaker, ...)
    dropped; title and description lines kept, without their tags."""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(("<title>", "<description>")):
            yield _UNWRAP.sub("", stripped).strip()
        elif not stripped.startswith("<"):
            yield stripped


_FORMATS = {"plain": lambda lines: lines, "sgm": _sgm_lines, "tags": _tagged_lines}
