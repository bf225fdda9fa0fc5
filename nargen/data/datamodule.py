"""The LightningDataModule: a prepared corpus, its tokenizer and token-budget batches."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nargen.data.batching import TokenBudgetBatchSampler, pad_sequences
from nargen.data.corpora import default_root, find_split_file, read_split
from nargen.data.prepared import PreparedCorpus, TokenizerSpec, open_or_prepare
from nargen.data.tokenizer import BOS, EOS, PAD, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Which corpus, pair and splits; tokenizer size; batching."""

    corpus: str = "multi30k"
    """Corpus name: multi30k (downloadable), or any name for a local folder given as root."""
    root: str | None = None
    """Folder with ``{split}.{lang}[.gz]`` files; default ``$NARGEN_DATA`` or ``data/<corpus>``."""
    src_lang: str = "de"
    """Source language: the file suffix of the source side ({split}.{src_lang})."""
    tgt_lang: str = "en"
    """Target language: the file suffix of the target side."""
    train_split: str = "train"
    """Split trained on."""
    valid_split: str = "val"
    """Split validated on (loss and BLEU) during training."""
    test_split: str = "test_2016_flickr"
    """Split fit evaluates the best checkpoint on at the end (empty: none)."""
    vocab_size: int = 8000
    """Joint SentencePiece vocabulary size, special ids included."""
    tokenizer_type: str = "unigram"
    """SentencePiece model type: unigram or bpe."""
    tokenizer: str | None = None
    """Reuse a tokenizer instead of training one: a SentencePiece ``.model`` file or a
    nargen checkpoint (e.g. the teacher's, so a distilled student shares its vocabulary)."""
    tokenizer_sample_pairs: int = 300_000
    """The tokenizer trains on at most this many training pairs, drawn uniformly."""
    cache_dir: str | None = None
    """Where the prepared corpus and trained tokenizers are kept; default
    ``<root>/.nargen``, or ``~/.cache/nargen/<corpus>`` when the root is read-only."""
    prepare_workers: int = 0
    """Processes that encode the corpus when it is prepared (0: one per CPU, at most 8)."""
    loader_workers: int | None = None
    """DataLoader worker processes for training batches (default: none on a CPU-only
    machine, where they would take cores from training; 4 with a GPU)."""
    max_tokens: int = 4096
    """Token budget of a training batch (padded source or target tokens)."""
    max_len: int = 250
    """Training pairs with more tokens on either side are dropped (and reported)."""
    valid_bleu_sentences: int = 0
    """Validation BLEU on the first N validation sentences (0 = all)."""
    seed: int = 1
    """Seed of the batch order (with the epoch: the same on every rank and after a resume)."""

    def resolved_root(self) -> Path:
        return Path(self.root) if self.root else default_root(self.corpus)


class PairDataset(Dataset):
    """Tokenized pairs held in memory (validation); items are ``(index, source ids +
    EOS, target ids)``."""

    def __init__(self, source: list[list[int]], target: list[list[int]], indices: list[int]) -> None:
        self.source = [torch.tensor(ids + [EOS], dtype=torch.long) for ids in source]
        self.target = [torch.tensor(ids, dtype=torch.long) for ids in target]
        self.indices = indices

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return self.indices[i], self.source[i], self.target[i]

    def side_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source (with EOS) and target (without) length of each item."""
        return (np.array([len(s) for s in self.source], dtype=np.int64),
                np.array([len(t) for t in self.target], dtype=np.int64))


class PreparedPairs(Dataset):
    """The kept lines of a prepared corpus, read from its memory maps on demand; items
    are ``(line index, source ids + EOS, target ids)``."""

    def __init__(self, corpus: PreparedCorpus, lines: np.ndarray) -> None:
        self.corpus = corpus
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        line = int(self.lines[i])
        ids = self.corpus.ids("source", line)
        source = np.empty(len(ids) + 1, dtype=np.int64)  # the ids and EOS in one host array
        source[:-1], source[-1] = ids, EOS
        target = torch.from_numpy(self.corpus.ids("target", line).astype(np.int64))
        return line, torch.from_numpy(source), target

    def side_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source (with EOS) and target (without) length of each item."""
        source = self.corpus.lengths("source")[self.lines].astype(np.int32)
        source += 1
        return source, self.corpus.lengths("target")[self.lines].astype(np.int32)


def batch_keys(dataset: PairDataset | PreparedPairs) -> tuple[np.ndarray, np.ndarray]:
    """Padded cost of each item (the longer side, with its EOS/BOS), and the tiebreak
    that orders items of equal cost: target, then source length (packed into one
    integer), so that a batch also pads its shorter side little (the decoder's side
    first, the costlier). Both as narrow as the lengths allow: a few bytes an item."""
    source, target = dataset.side_lengths()
    cost = np.maximum(source, target + 1)
    wide = len(cost) and int(cost.max()) >= 2**16
    key = np.int64 if wide else np.uint32
    tiebreak = target.astype(key)
    tiebreak <<= 32 if wide else 16
    tiebreak |= source.astype(key)
    return cost.astype(np.int32 if wide else np.uint16), tiebreak


def collate_pairs(items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch of ``src`` (ids + EOS), ``tgt_in`` (BOS + ids), ``tgt_out`` (ids + EOS)."""
    indices, sources, targets = zip(*items)
    bos, eos = torch.tensor([BOS]), torch.tensor([EOS])
    return {
        "index": torch.tensor(indices, dtype=torch.long),
        "src": pad_sequences(sources, PAD),
        "tgt_in": pad_sequences([torch.cat([bos, t]) for t in targets], PAD),
        "tgt_out": pad_sequences([torch.cat([t, eos]) for t in targets], PAD),
    }


def usable_lines(
    source_lengths: np.ndarray, target_lengths: np.ndarray, max_len: int
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """0-based indices of the pairs kept for training, and the 1-based line numbers
    dropped per reason: empty, or too long on either side (with its EOS); a pair is
    kept or dropped whole, so nothing shifts silently."""
    empty = (source_lengths == 0) | (target_lengths == 0)
    too_long = ~empty & ((source_lengths >= max_len) | (target_lengths >= max_len))  # + EOS > max_len
    kept = np.flatnonzero(~empty & ~too_long).astype(np.int32 if len(empty) < 2**31 else np.int64)
    dropped = {"empty": (np.flatnonzero(empty) + 1).tolist(),
               "too_long": (np.flatnonzero(too_long) + 1).tolist()}
    return kept, dropped


def describe_dropped(path: Path, dropped: dict[str, list[int]]) -> str | None:
    """A one-line report of dropped lines, or None when nothing was dropped."""
    parts = []
    for reason, lines in dropped.items():
        if lines:
            shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
            parts.append(f"{len(lines)} {reason.replace('_', ' ')} (lines {shown})")
    return f"{path}: dropped " + "; ".join(parts) if parts else None


class TranslationDataModule(L.LightningDataModule):
    """Prepares the configured corpus once (tokenizer and memory-mapped ids, see
    ``nargen.data.prepared``), then serves token-budget batches from it."""

    def __init__(self, config: DataConfig, max_len: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.max_len = min(config.max_len, max_len) if max_len else config.max_len
        self._tokenizer: Tokenizer | None = None
        self._prepared: PreparedCorpus | None = None
        self.train_set: PreparedPairs | None = None
        self.valid_set: PairDataset | None = None
        self.valid_refs: list[str] = []
        self.valid_sources: list[str] = []
        self._resume_at: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next training loader start in ``epoch`` after ``batches_done`` batches."""
        self._resume_at = (epoch, batches_done)

    def cache_dir(self) -> Path:
        if self.config.cache_dir:
            return Path(self.config.cache_dir)
        root = self.config.resolved_root()
        if os.access(root, os.W_OK):
            return root / ".nargen"
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nargen" / self.config.corpus

    @property
    def prepared(self) -> PreparedCorpus:
        """The training split, prepared on first use and opened (in seconds) afterwards."""
        if self._prepared is None:
            c = self.config
            root = c.resolved_root()
            if self._tokenizer is None and c.tokenizer:
                self._tokenizer = load_tokenizer(c.tokenizer)
            spec = TokenizerSpec(model=self._tokenizer, vocab_size=c.vocab_size,
                                 model_type=c.tokenizer_type, sample_pairs=c.tokenizer_sample_pairs,
                                 cache_dir=self.cache_dir())
            self._prepared = open_or_prepare(
                find_split_file(root, c.train_split, c.src_lang),
                find_split_file(root, c.train_split, c.tgt_lang),
                self.cache_dir(), spec, workers=c.prepare_workers, log=log.info,
            )
        return self._prepared

    def prepare_data(self) -> None:
        self.prepared  # noqa: B018 - prepares the corpus (Lightning: once per machine)

    @property
    def tokenizer(self) -> Tokenizer:
        """The configured tokenizer, or the one the corpus was prepared with (a joint
        SentencePiece model trained on a sample of the training split, then cached)."""
        if self._tokenizer is None:
            self._tokenizer = self.prepared.tokenizer
        return self._tokenizer

    def signature(self) -> dict[str, Any]:
        """What the model was trained on: corpus, pair, split, size and content digest."""
        meta = self.prepared.meta
        return {
            "corpus": self.config.corpus,
            "pair": f"{self.config.src_lang}-{self.config.tgt_lang}",
            "split": self.config.train_split,
            "pairs": meta["lines"],
            "sha256": meta["sha256"],
            "config": asdict(self.config),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        corpus = self.prepared
        tokenizer = self.tokenizer
        kept, dropped = usable_lines(corpus.lengths("source"), corpus.lengths("target"), self.max_len)
        source_path = Path(corpus.meta["source_file"][0])
        report = describe_dropped(source_path, dropped)
        if report:
            log.warning(report)
        if not len(kept):
            raise ValueError(f"{source_path}: no usable training pairs")
        self.train_set = PreparedPairs(corpus, kept)
        c = self.config
        valid = read_split(c.resolved_root(), c.valid_split, c.src_lang, c.tgt_lang)
        n = c.valid_bleu_sentences or len(valid)
        sources, refs = valid.source[:n], valid.target[:n]
        src_ids = [ids[: self.max_len - 1] for ids in tokenizer.encode(sources)]
        tgt_ids = [ids[: self.max_len - 1] for ids in tokenizer.encode(refs)]
        self.valid_set = PairDataset(src_ids, tgt_ids, list(range(len(sources))))
        self.valid_refs, self.valid_sources = refs, sources

    def _loader(self, dataset: PairDataset | PreparedPairs, shuffle: bool, workers: int = 0) -> DataLoader:
        lengths, tiebreak = batch_keys(dataset)
        sampler = TokenBudgetBatchSampler(
            lengths, self.config.max_tokens, shuffle=shuffle, seed=self.config.seed, tiebreak=tiebreak,
        )
        # A private generator: creating an iterator must not draw from the global RNG,
        # or a resumed run's dropout masks would differ from an uninterrupted run's.
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate_pairs, generator=generator,
            num_workers=workers, persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def loader_workers(self) -> int:
        if self.config.loader_workers is not None:
            return self.config.loader_workers
        return 4 if torch.cuda.is_available() else 0

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        loader = self._loader(self.train_set, shuffle=True, workers=self.loader_workers())
        if self._resume_at is not None:
            epoch, batches_done = self._resume_at
            sampler = loader.batch_sampler
            sampler.set_epoch(epoch)
            if batches_done >= len(sampler):  # the checkpoint closed its epoch
                sampler.set_epoch(epoch + 1)
            else:
                sampler.skip_next(batches_done)
            self._resume_at = None
        return loader

    def val_dataloader(self) -> DataLoader:
        assert self.valid_set is not None, "call setup() first"
        return self._loader(self.valid_set, shuffle=False)
