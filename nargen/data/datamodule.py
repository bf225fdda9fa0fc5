"""The LightningDataModule: a corpus, a tokenizer and token-budget batches."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from nargen.data.batching import TokenBudgetBatchSampler, pad_sequences
from nargen.data.corpora import default_root, read_split
from nargen.data.corpus import ParallelText
from nargen.data.tokenizer import (
    BOS, EOS, PAD, Tokenizer, digest_texts, load_tokenizer, train_tokenizer,
)

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
    cache_dir: str | None = None
    """Where trained tokenizers are cached; default ``<root>/.nargen`` or ``~/.cache/nargen``."""
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
    """Tokenized pairs; items are ``(index, source ids, target ids)``."""

    def __init__(self, source: list[list[int]], target: list[list[int]], indices: list[int]) -> None:
        self.source = [torch.tensor(ids + [EOS], dtype=torch.long) for ids in source]
        self.target = [torch.tensor(ids, dtype=torch.long) for ids in target]
        self.indices = indices

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return self.indices[i], self.source[i], self.target[i]

    def lengths(self) -> list[int]:
        """Padded cost of each item: the longer side, with its EOS/BOS."""
        return [max(len(s), len(t) + 1) for s, t in zip(self.source, self.target)]

    def length_tiebreak(self) -> list[tuple[int, int]]:
        """Target, then source length of each item: orders items of equal cost so that a
        batch also pads its shorter side little (the decoder's side first, the costlier)."""
        return [(len(t), len(s)) for s, t in zip(self.source, self.target)]


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


def filter_pairs(
    text: ParallelText, tokenizer: Tokenizer, max_len: int
) -> tuple[list[list[int]], list[list[int]], list[int], dict[str, list[int]]]:
    """Tokenize and drop pairs that are empty or too long on either side, together.

    Returns kept source ids, target ids, their 0-based line indices and the 1-based
    line numbers dropped per reason (so nothing shifts silently).
    """
    src_ids, tgt_ids = tokenizer.encode(text.source), tokenizer.encode(text.target)
    kept_src, kept_tgt, kept_idx = [], [], []
    dropped: dict[str, list[int]] = {"empty": [], "too_long": []}
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            dropped["empty"].append(i + 1)
        elif len(s) + 1 > max_len or len(t) + 1 > max_len:
            dropped["too_long"].append(i + 1)
        else:
            kept_src.append(s)
            kept_tgt.append(t)
            kept_idx.append(i)
    return kept_src, kept_tgt, kept_idx, dropped


def describe_dropped(path: Path, dropped: dict[str, list[int]]) -> str | None:
    """A one-line report of dropped lines, or None when nothing was dropped."""
    parts = []
    for reason, lines in dropped.items():
        if lines:
            shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
            parts.append(f"{len(lines)} {reason.replace('_', ' ')} (lines {shown})")
    return f"{path}: dropped " + "; ".join(parts) if parts else None


class TranslationDataModule(L.LightningDataModule):
    """Reads the configured corpus, trains or loads the tokenizer, serves batches."""

    def __init__(self, config: DataConfig, max_len: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.max_len = min(config.max_len, max_len) if max_len else config.max_len
        self._tokenizer: Tokenizer | None = None
        self._train_text: ParallelText | None = None
        self.train_set: PairDataset | None = None
        self.valid_set: PairDataset | None = None
        self.valid_refs: list[str] = []
        self.valid_sources: list[str] = []
        self._resume_at: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next training loader start in ``epoch`` after ``batches_done`` batches."""
        self._resume_at = (epoch, batches_done)

    def _read(self, split: str) -> ParallelText:
        c = self.config
        return read_split(c.resolved_root(), split, c.src_lang, c.tgt_lang)

    @property
    def train_text(self) -> ParallelText:
        if self._train_text is None:
            self._train_text = self._read(self.config.train_split)
        return self._train_text

    def cache_dir(self) -> Path:
        if self.config.cache_dir:
            return Path(self.config.cache_dir)
        root = self.config.resolved_root()
        if os.access(root, os.W_OK):
            return root / ".nargen"
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nargen" / self.config.corpus

    @property
    def tokenizer(self) -> Tokenizer:
        """Joint SentencePiece model of the training split (trained once, then cached)."""
        if self._tokenizer is None and self.config.tokenizer:
            self._tokenizer = load_tokenizer(self.config.tokenizer)
        if self._tokenizer is None:
            text = self.train_text
            self._tokenizer = train_tokenizer(
                text.source + text.target, self.config.vocab_size, self.cache_dir(),
                self.config.tokenizer_type,
            )
        return self._tokenizer

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use an existing tokenizer (e.g. one restored from a checkpoint)."""
        self._tokenizer = tokenizer

    def signature(self) -> dict[str, Any]:
        """What the model was trained on: corpus, pair, split, size and text digest."""
        text = self.train_text
        return {
            "corpus": self.config.corpus,
            "pair": f"{self.config.src_lang}-{self.config.tgt_lang}",
            "split": self.config.train_split,
            "pairs": len(text),
            "sha256": digest_texts(text.source + text.target),
            "config": asdict(self.config),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tokenizer = self.tokenizer
        src, tgt, idx, dropped = filter_pairs(self.train_text, tokenizer, self.max_len)
        report = describe_dropped(self.train_text.source_path, dropped)
        if report:
            log.warning(report)
        if not src:
            raise ValueError(f"{self.train_text.source_path}: no usable training pairs")
        self.train_set = PairDataset(src, tgt, idx)
        valid = self._read(self.config.valid_split)
        n = self.config.valid_bleu_sentences or len(valid)
        sources, refs = valid.source[:n], valid.target[:n]
        src_ids = [ids[: self.max_len - 1] for ids in tokenizer.encode(sources)]
        tgt_ids = [ids[: self.max_len - 1] for ids in tokenizer.encode(refs)]
        self.valid_set = PairDataset(src_ids, tgt_ids, list(range(len(sources))))
        self.valid_refs, self.valid_sources = refs, sources

    def _loader(self, dataset: PairDataset, shuffle: bool) -> DataLoader:
        sampler = TokenBudgetBatchSampler(
            dataset.lengths(), self.config.max_tokens, shuffle=shuffle, seed=self.config.seed,
            tiebreak=dataset.length_tiebreak(),
        )
        # A private generator: creating an iterator must not draw from the global RNG,
        # or a resumed run's dropout masks would differ from an uninterrupted run's.
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_pairs, generator=generator)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        loader = self._loader(self.train_set, shuffle=True)
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
