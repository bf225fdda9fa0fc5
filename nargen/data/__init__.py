"""Corpora, tokenizers, batching and the DataModule."""

from nargen.data.batching import TokenBudgetBatchSampler, token_budget_batches
from nargen.data.corpora import MULTI30K, NAMED_CORPORA, download, read_split
from nargen.data.corpus import CorpusError, ParallelText, read_lines, read_parallel
from nargen.data.datamodule import DataConfig, TranslationDataModule
from nargen.data.prepared import PreparedCorpus, TokenizerSpec, open_or_prepare
from nargen.data.tokenizer import SpecialTokens, Tokenizer, train_tokenizer

__all__ = [
    "MULTI30K", "NAMED_CORPORA", "CorpusError", "DataConfig", "ParallelText", "PreparedCorpus",
    "SpecialTokens", "TokenBudgetBatchSampler", "Tokenizer", "TokenizerSpec",
    "TranslationDataModule", "download", "open_or_prepare", "read_lines", "read_parallel",
    "read_split", "token_budget_batches", "train_tokenizer",
]
