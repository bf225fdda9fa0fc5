"""SentencePiece tokenizer with the reserved ids every generation family needs."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from nargen.data.corpus import CorpusError

PAD, BOS, EOS, UNK, MASK, BLANK = 0, 1, 2, 3, 4, 5
MASK_PIECE, BLANK_PIECE = "<mask>", "<blank>"


@dataclass(frozen=True)
class SpecialTokens:
    """Reserved ids: pad, bos, eos, unk, and mask (CMLM) and blank (CTC)."""

    pad: int = PAD
    bos: int = BOS
    eos: int = EOS
    unk: int = UNK
    mask: int = MASK
    blank: int = BLANK


class Tokenizer:
    """A SentencePiece model held as bytes, so it can travel inside a checkpoint."""

    def __init__(self, model_bytes: bytes) -> None:
        self.model_bytes = model_bytes
        self.processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.special = SpecialTokens()
        expected = {PAD: "<pad>", BOS: "<s>", EOS: "</s>", UNK: "<unk>", MASK: MASK_PIECE, BLANK: BLANK_PIECE}
        for token_id, piece in expected.items():
            if self.processor.id_to_piece(token_id) != piece:
                raise ValueError(
                    f"SentencePiece model has {self.processor.id_to_piece(token_id)!r} at id "
                    f"{token_id}, expected {piece!r}"
                )

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids for each text (no BOS/EOS added)."""
        # One thread here and in decode: SentencePiece's thread pool costs ~1 ms a call
        # (more on a busy machine), more than it saves even on a 1,000-line batch.
        try:
            return self.processor.encode(texts, out_type=int, num_threads=1)
        except TypeError:
            # a str UTF-8 cannot hold (a lone surrogate, as a lenient decode upstream
            # leaves): each unencodable character is read as "?", one output per text still
            return self.processor.encode([_utf8_safe(t) for t in texts], out_type=int, num_threads=1)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Detokenized text for each id list; reserved ids are dropped."""
        reserved = {PAD, BOS, EOS, MASK, BLANK}
        return self.processor.decode(
            [[i for i in row if i not in reserved] for row in ids], num_threads=1
        )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a SentencePiece ``.model`` file or from inside a nargen checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer or checkpoint")
    if path.suffix == ".model":
        return Tokenizer.load(path)
    import torch  # a checkpoint: read only its metadata, without running pickled code

    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return Tokenizer(state["nargen"]["tokenizer"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a nargen checkpoint with a tokenizer") from None


def training_key(texts_digest: str, vocab_size: int, model_type: str) -> str:
    """Cache key for a tokenizer trained on text with ``texts_digest``."""
    raw = f"{texts_digest}|{vocab_size}|{model_type}|spm{spm.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def digest_texts(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def train_tokenizer(
    texts: list[str],
    vocab_size: int,
    cache_dir: str | Path,
    model_type: str = "unigram",
    seed_sentences: int = 1_000_000,
) -> Tokenizer:
    """Train (or load from ``cache_dir``) a joint SentencePiece model on ``texts``.

    The cache file name is keyed by the training text, vocabulary size, model type and
    SentencePiece version, so a changed corpus never reuses a stale model.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"spm-{training_key(digest_texts(texts), vocab_size, model_type)}.model"
    if path.is_file():
        return Tokenizer.load(path)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(t for t in texts if t.strip()),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
            user_defined_symbols=[MASK_PIECE, BLANK_PIECE],
            input_sentence_size=seed_sentences,
            shuffle_input_sentence=True,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as err:
        if "Vocabulary size too high" not in str(err):
            raise
        at_most = str(err).rsplit("<=", 1)[-1].strip(" .")
        raise CorpusError(f"vocab_size {vocab_size} is more than this training text supports "
                          f"(at most {at_most}): set data.vocab_size lower") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".part") as tmp:
        tmp.write(model.getvalue())
    Path(tmp.name).replace(path)
    return Tokenizer(model.getvalue())


def _utf8_safe(text: str) -> str:
    """``text`` with the characters UTF-8 cannot encode (lone surrogates) as "?"."""
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")
    return text.encode("utf-8", "replace").decode("utf-8")
