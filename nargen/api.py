"""The Python API: a checkpoint and sentences in, translations with their scores,
passes, refinement history and n-best lists out.

    from nargen import Translator
    translator = Translator.from_checkpoint("runs/ar_tiny/checkpoints/best.ckpt")
    result = translator.translate(["Ein Hund rennt."], beam=4)[0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nargen.models import Seq2SeqModule, load_module


@dataclass
class TranslatedLine:
    text: str
    tokens: list[int]
    score: float | None
    passes: int
    """Sequential decoder passes of the batch that held the line."""
    history: list[str] = field(default_factory=list)
    nbest: list[dict[str, Any]] = field(default_factory=list)


class Translator:
    """A loaded checkpoint of any family, decoding with the checkpoint's own settings
    unless options say otherwise (the same options as ``nargen translate``)."""

    def __init__(self, module: Seq2SeqModule) -> None:
        self.module = module.eval()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    ) -> "Translator":
        """Load ``path``; ``device`` defaults to a GPU when there is one, as the CLI does;
        ``dtype`` (e.g. ``torch.bfloat16``) casts the weights."""
        module = load_module(path, map_location=device)
        return cls(module if dtype is None else module.to(dtype=dtype))

    @property
    def family(self) -> str:
        return self.module.family

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """The padded source tensor the decoders in ``nargen.decoding`` take."""
        return self.module.encode_batch(texts)

    def decoder_settings(self) -> dict[str, Any]:
        """The checkpoint's own settings for its family's decoder in ``nargen.decoding``."""
        return self.module.decoder_settings()

    def translate(self, texts: list[str], **options: Any) -> list[TranslatedLine]:
        """One ``TranslatedLine`` per input text, in order; ``options`` are the family's
        decoder options (``nargen fit --help`` lists them under ``decode.options``)."""
        result = self.module.translate(texts, details=True, **options)
        return [TranslatedLine(text=text, **info) for text, info in zip(result.texts, result.details)]
