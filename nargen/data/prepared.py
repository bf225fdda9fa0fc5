"""A parallel corpus prepared once: token ids in memory-mapped arrays with a length index.

Layout of a prepared folder (written under a temporary name and renamed when complete,
so an interrupted preparation never leaves a half-written corpus behind)::

    meta.json          lines, token dtype, content digest, the files and tokenizer it came from
    tokenizer.model    the SentencePiece model the ids belong to
    source.bin         every source line's ids, one after another (no EOS)
    target.bin         every target line's ids
    source.offsets.npy line i's ids are source.bin[offsets[i]:offsets[i + 1]]
    target.offsets.npy the same for the target side
    source.lengths.npy each line's token count (uint16, or uint32 when a line needs it):
    target.lengths.npy the length index batches are built from, without reading the offsets

Every line of the text files is kept (empty or long lines too), so line i of the arrays
is line i + 1 of the files; filtering by length is the reader's choice, made from the
offsets without touching the token arrays.

Storage: plain numpy arrays opened with ``numpy.memmap`` / ``numpy.load(mmap_mode="r")``.
Ragged integer sequences are exactly a flat token array plus an offset index (the layout
of fairseq's indexed datasets); numpy is already a dependency, its memory maps are shared
between processes and DataLoader workers through the page cache, and opening one reads
nothing but its header. An Arrow table would store the same two arrays behind a larger
dependency.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gzip
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from nargen.data.corpus import CorpusError, decode_lines
from nargen.data.tokenizer import Tokenizer, train_tokenizer

FORMAT_VERSION = 2
CHUNK_LINES = 20_000
"""Lines per unit of work handed to an encoding process."""
SINGLE_PROCESS_LINES = 100_000
"""Corpora up to this many lines are encoded in this process (starting workers costs more)."""


@dataclass(frozen=True)
class TokenizerSpec:
    """How the ids are made: an existing tokenizer, or one trained on a sample of the corpus."""

    model: Tokenizer | None = None
    """Use this tokenizer (e.g. a teacher's)."""
    vocab_size: int = 8000
    model_type: str = "unigram"
    sample_pairs: int = 300_000
    """Train on at most this many pairs, drawn uniformly from the whole corpus."""
    cache_dir: Path | None = None
    """Where trained SentencePiece models are cached (keyed by their training text)."""

    def key(self) -> dict[str, Any]:
        if self.model is not None:
            return {"given": hashlib.sha256(self.model.model_bytes).hexdigest()}
        return {"vocab_size": self.vocab_size, "model_type": self.model_type,
                "sample_pairs": self.sample_pairs}


class PreparedCorpus:
    """A prepared folder, opened read-only: ids by line, lengths, the tokenizer, the digest."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = json.loads((self.folder / "meta.json").read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise CorpusError(f"{self.folder}: prepared with format {self.meta.get('format')}, "
                              f"this nargen reads format {FORMAT_VERSION}; delete it to prepare again")
        dtype = np.dtype(self.meta["dtype"])
        self.offsets = {side: np.load(self.folder / f"{side}.offsets.npy", mmap_mode="r")
                        for side in ("source", "target")}
        self._lengths = {side: np.load(self.folder / f"{side}.lengths.npy", mmap_mode="r")
                         for side in ("source", "target")}
        self.tokens = {side: _open_tokens(self.folder / f"{side}.bin", dtype)
                       for side in ("source", "target")}

    def __len__(self) -> int:
        return int(self.meta["lines"])

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer((self.folder / "tokenizer.model").read_bytes())

    def lengths(self, side: str) -> np.ndarray:
        """Token count of every line of ``side`` ("source" or "target"): a read-only
        memory map of an unsigned type (compute on a wider type before adding to it)."""
        return self._lengths[side]

    def ids(self, side: str, line: int) -> np.ndarray:
        """The ids of 0-based ``line`` of ``side`` (a view into the memory map)."""
        offsets = self.offsets[side]
        return self.tokens[side][offsets[line]:offsets[line + 1]]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the maps
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])


def _open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def file_identity(path: Path) -> list[Any]:
    """What a file is taken to be without reading it: absolute path, size, mtime."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def prepared_folder(cache_dir: Path, source: Path, target: Path, spec: TokenizerSpec) -> Path:
    """The folder a corpus prepares into: keyed by both files' identity and the tokenizer."""
    key = json.dumps({"format": FORMAT_VERSION, "source": file_identity(source),
                      "target": file_identity(target), "tokenizer": spec.key()}, sort_keys=True)
    name = f"{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return cache_dir / "prepared" / name


def open_or_prepare(
    source: Path,
    target: Path,
    cache_dir: Path,
    spec: TokenizerSpec,
    *,
    workers: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> PreparedCorpus:
    """Open the prepared copy of a parallel corpus, preparing it first if there is none.

    Concurrent callers (the ranks of a multi-process run started together) wait on a
    lock while one of them prepares.
    """
    source, target = Path(source), Path(target)
    for path in (source, target):
        if not path.is_file():
            raise CorpusError(f"{path}: no such file")
    folder = prepared_folder(cache_dir, source, target, spec)
    if (folder / "meta.json").is_file():
        return PreparedCorpus(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_suffix(".lock")):
        if not (folder / "meta.json").is_file():
            prepare(source, target, folder, spec, workers=workers, log=log)
    return PreparedCorpus(folder)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(
    source: Path,
    target: Path,
    folder: Path,
    spec: TokenizerSpec,
    *,
    workers: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Tokenize a parallel corpus into ``folder`` (see the module docstring); returns its meta.

    With a tokenizer to train, one pass draws its sample (and checks that both files are
    valid UTF-8 and aligned, so a bad line is refused before anything is encoded); the
    encoding pass checks again as it decodes, which is all there is when the tokenizer is
    given. ``workers``: encoding processes (0: one per CPU, at most 8).
    """
    started = time.perf_counter()
    tokenizer = spec.model
    if tokenizer is None:
        sample = sample_pairs(source, target, spec.sample_pairs)
        log(f"{source}: tokenizer sample of {len(sample[0]):,} pairs drawn "
            f"in {time.perf_counter() - started:.1f} s")
        tokenizer = train_tokenizer(sample[0] + sample[1], spec.vocab_size,
                                    spec.cache_dir or folder.parent, spec.model_type)
        del sample
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        meta = _encode_into(tmp, source, target, tokenizer, dtype, workers)
        meta.update({
            "format": FORMAT_VERSION,
            "dtype": np.dtype(dtype).name,
            "source_file": file_identity(source),
            "target_file": file_identity(target),
            "tokenizer": spec.key(),
            "tokenizer_sha256": hashlib.sha256(tokenizer.model_bytes).hexdigest(),
            "seconds": round(time.perf_counter() - started, 1),
        })
        (tmp / "tokenizer.model").write_bytes(tokenizer.model_bytes)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():  # a folder whose meta.json was deleted by hand
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{source}: {meta['lines']:,} pairs prepared into {folder} in {meta['seconds']} s")
    return meta


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_chunks(source: Path, target: Path) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """``(first line number, source lines, target lines)`` of both files, read in step,
    ``CHUNK_LINES`` at a time.

    Lines are raw bytes with their line ends. Files of different lengths raise
    ``CorpusError`` naming both files and their line counts; a file that cannot be read
    (a truncated gzip) raises naming it.
    """
    with _open_binary(source) as src, _open_binary(target) as tgt:
        first = 1
        while True:
            src_lines = _read_lines(src, CHUNK_LINES, source)
            tgt_lines = _read_lines(tgt, CHUNK_LINES, target)
            if len(src_lines) != len(tgt_lines):
                n_src = first - 1 + len(src_lines) + _count_rest(src, source)
                n_tgt = first - 1 + len(tgt_lines) + _count_rest(tgt, target)
                raise CorpusError(f"parallel files differ in length: {source} has {n_src} lines, "
                                  f"{target} has {n_tgt} lines")
            if not src_lines:
                return
            yield first, src_lines, tgt_lines
            first += len(src_lines)


def _read_lines(handle: BinaryIO, n: int, path: Path) -> list[bytes]:
    try:
        return list(itertools.islice(handle, n))
    except (OSError, EOFError) as err:
        raise CorpusError(f"{path}: cannot read ({err})") from err


def _count_rest(handle: BinaryIO, path: Path) -> int:
    count = 0
    while lines := _read_lines(handle, CHUNK_LINES, path):
        count += len(lines)
    return count


def decode_chunk(lines: list[bytes], path: Path, first: int) -> list[str]:
    """Lines read by ``read_chunks`` as text (see ``decode_lines``)."""
    return decode_lines(b"".join(lines), str(path), first)


def sample_pairs(source: Path, target: Path, k: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A uniform sample of at most ``k`` pairs, in corpus order (reservoir sampling,
    Li's algorithm L: only the lines drawn are kept); the whole corpus, in order, when it
    has no more than ``k`` lines. Every line is checked for UTF-8 and alignment."""
    rng = random.Random(seed)

    def skip(weight: float) -> int:  # lines passed over before the next one drawn
        return int(math.log(max(rng.random(), 1e-300)) / math.log1p(-min(weight, 1 - 1e-16)))

    def shrink(weight: float) -> float:
        return weight * math.exp(math.log(max(rng.random(), 1e-300)) / k)

    reservoir: list[tuple[int, bytes, bytes]] = []
    weight = shrink(1.0) if k else 0.0
    next_pick = k + skip(weight) if k else math.inf
    for first, src_lines, tgt_lines in read_chunks(source, target):
        decode_chunk(src_lines, source, first)  # raises on a bad line
        decode_chunk(tgt_lines, target, first)
        base = first - 1  # the 0-based index of the chunk's first line
        end = base + len(src_lines)
        for line in range(base, min(end, base + k - len(reservoir))):
            reservoir.append((line, src_lines[line - base], tgt_lines[line - base]))
        while next_pick < end:
            offset = next_pick - base
            reservoir[rng.randrange(k)] = (next_pick, src_lines[offset], tgt_lines[offset])
            weight = shrink(weight)
            next_pick += 1 + skip(weight)
    reservoir.sort(key=lambda item: item[0])
    src = decode_chunk([s for _, s, _ in reservoir], source, 1)
    tgt = decode_chunk([t for _, _, t in reservoir], target, 1)
    return src, tgt


_worker_tokenizer: Tokenizer | None = None


def _start_worker(model_bytes: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_bytes)


def _encode_chunk(job: tuple[int, list[bytes], list[bytes], Path, Path, str]) -> tuple[np.ndarray, ...]:
    """Decode (checking UTF-8) and encode one chunk: flat ids and lengths of each side."""
    first, src_lines, tgt_lines, source, target, dtype = job
    assert _worker_tokenizer is not None
    out = []
    for lines, path in ((src_lines, source), (tgt_lines, target)):
        ids = _worker_tokenizer.encode(decode_chunk(lines, path, first))
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        out += [flat, lengths]
    return tuple(out)


def _encode_into(folder: Path, source: Path, target: Path, tokenizer: Tokenizer,
                 dtype: type, workers: int) -> dict[str, Any]:
    """Encode both files chunk by chunk into ``folder``; returns lines and content digest."""
    digests = {"source": hashlib.sha256(), "target": hashlib.sha256()}
    lengths: dict[str, list[np.ndarray]] = {"source": [], "target": []}
    dtype_name = np.dtype(dtype).name

    def jobs() -> Iterator[tuple[int, list[bytes], list[bytes], Path, Path, str]]:
        for first, src_lines, tgt_lines in read_chunks(source, target):
            digests["source"].update(b"".join(src_lines))
            digests["target"].update(b"".join(tgt_lines))
            yield first, src_lines, tgt_lines, source, target, dtype_name

    workers = workers or min(8, os.cpu_count() or 1)
    big = _line_estimate(source) > SINGLE_PROCESS_LINES
    with open(folder / "source.bin", "wb") as src_out, open(folder / "target.bin", "wb") as tgt_out:
        with _pool(tokenizer, workers if big else 1) as pool:
            for src_ids, src_len, tgt_ids, tgt_len in pool(_encode_chunk, jobs()):
                src_ids.tofile(src_out)
                tgt_ids.tofile(tgt_out)
                lengths["source"].append(src_len)
                lengths["target"].append(tgt_len)
    lines = 0
    for side, parts in lengths.items():
        counts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        np.save(folder / f"{side}.offsets.npy", offsets)
        fits_16_bits = not len(counts) or counts.max() <= np.iinfo(np.uint16).max
        np.save(folder / f"{side}.lengths.npy", counts.astype(np.uint16 if fits_16_bits else np.uint32))
        lines = len(counts)
    digest = hashlib.sha256((digests["source"].hexdigest() + digests["target"].hexdigest()).encode())
    return {"lines": lines, "sha256": digest.hexdigest(),
            "source_sha256": digests["source"].hexdigest(), "target_sha256": digests["target"].hexdigest()}


def _line_estimate(path: Path) -> int:
    """Lines in a file guessed from its size (a gzip holds about 3x its size in text)."""
    size = path.stat().st_size * (3 if path.suffix == ".gz" else 1)
    return size // 40


@contextlib.contextmanager
def _pool(tokenizer: Tokenizer, workers: int) -> Iterator[Callable]:
    """An ordered ``map`` over encoding processes (or this process, for one worker)."""
    if workers <= 1:
        _start_worker(tokenizer.model_bytes)
        yield map
        return
    # fork: the workers need nothing but this module and the tokenizer's bytes
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer.model_bytes,)) as pool:
        yield lambda fn, jobs: _bounded_map(pool, fn, jobs, window=2 * workers)


def _bounded_map(pool: Any, fn: Callable, jobs: Iterator, window: int) -> Iterator:
    """``pool.imap`` that reads ahead at most ``window`` jobs (``imap`` would read the
    whole corpus into memory when encoding is slower than reading)."""
    pending: collections.deque = collections.deque()
    for job in jobs:
        pending.append(pool.apply_async(fn, (job,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
