"""Named corpora: where their files live locally and how to download them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nargen.data.corpus import CorpusError, ParallelText, read_parallel

DATA_ENV = "NARGEN_DATA"


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus laid out as ``{split}.{lang}.gz`` files, fetchable from ``base_url``."""

    name: str
    base_url: str
    sha256: dict[str, str] = field(default_factory=dict)

    def filename(self, split: str, lang: str) -> str:
        return f"{split}.{lang}.gz"


MULTI30K = NamedCorpus(
    name="multi30k",
    base_url="https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/",
    # Known digests of the repository's raw files (checked against local copies).
    sha256={
        "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    },
)

NAMED_CORPORA: dict[str, NamedCorpus] = {MULTI30K.name: MULTI30K}


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    corpus: NamedCorpus,
    root: str | Path,
    splits: list[str],
    langs: list[str],
    base_url: str | None = None,
    allow_unchecked: bool = False,
) -> list[Path]:
    """Fetch ``{split}.{lang}.gz`` files into ``root`` unless already there.

    Every file is verified against the corpus's sha256 table (a mismatch deletes the
    download and raises); a file the table does not list is refused before anything
    is fetched, unless ``allow_unchecked``. Each file is written to a temporary name and
    renamed, so an interrupted download never leaves a truncated file behind. Returns
    the paths fetched.
    """
    unknown = [corpus.filename(s, lang) for s in splits for lang in langs
               if corpus.filename(s, lang) not in corpus.sha256]
    if unknown and not allow_unchecked:
        raise CorpusError(
            f"{corpus.name}: no sha256 known for {', '.join(unknown)} (checked files: "
            f"{', '.join(sorted(corpus.sha256))}); fetch them unchecked with --allow-unchecked"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fetched = []
    for split in splits:
        for lang in langs:
            name = corpus.filename(split, lang)
            target = root / name
            if target.exists() or (root / f"{split}.{lang}").exists():
                continue
            url = (base_url or corpus.base_url).rstrip("/") + "/" + name
            with tempfile.NamedTemporaryFile(dir=root, suffix=".part", delete=False) as tmp:
                tmp_path = Path(tmp.name)
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        shutil.copyfileobj(response, tmp)
                except Exception as err:  # noqa: BLE001 - any failure is reported by URL
                    tmp_path.unlink(missing_ok=True)
                    raise CorpusError(f"download of {url} failed: {err}") from err
            expected = corpus.sha256.get(name)
            if expected is not None and sha256_of(tmp_path) != expected:
                tmp_path.unlink()
                raise CorpusError(f"{url}: sha256 mismatch (expected {expected}); file discarded")
            tmp_path.replace(target)
            fetched.append(target)
    return fetched
