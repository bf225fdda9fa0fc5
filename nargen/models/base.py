"""The LightningModule base every family shares: optimizer, schedule, validation BLEU,
checkpoint metadata and ``translate()``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import lightning as L
import sacrebleu
import torch
import torch.distributed as dist

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.data.batching import pad_sequences, token_budget_batches
from nargen.data.tokenizer import EOS, PAD, Tokenizer
from nargen.decoding import DecodeResult, SpecialIds
from nargen.decoding.options import DecodingOptions, check_options, option_defaults


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then inverse-square-root decay."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of warm-up."""
    warmup_steps: int = 500
    """Updates of linear warm-up before the inverse-square-root decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    label_smoothing: float = 0.1
    """Label smoothing of the token cross-entropy (families that use one)."""
    max_nonfinite_steps: int = 10
    """Stop after this many consecutive steps with a non-finite loss or gradient."""


@dataclass
class DecodeConfig:
    """Decoding settings used for validation and as the defaults of translate."""

    options: dict[str, Any] = field(default_factory=dict)
    """The family's decoder options (listed per family at the end of nargen fit --help:
    e.g. beam, length_penalty for autoregressive; iterations, length_beam for cmlm),
    checked against the family's own names and types."""
    validation: dict[str, Any] = field(default_factory=dict)
    """Options overriding the above while validating during training (e.g. fewer
    iterations or a smaller length beam, so validation does not eat the training time)."""
    max_tokens: int = 2500
    """Source-token budget of a translation batch."""


def decode_config_from_metadata(legacy_keys: tuple[str, ...], values: dict[str, Any]) -> DecodeConfig:
    """A checkpoint's decode settings, including those of older checkpoints, whose
    settings beside ``options`` go into it where the family takes them
    (``legacy_keys``: ``Seq2SeqModule.legacy_decode_keys``)."""
    values = dict(values)
    options = dict(values.pop("options", {}))
    for key in ("beam", "length_penalty", "max_len_a", "max_len_b"):
        value = values.pop(key, None)
        if value is not None and key in legacy_keys:
            options.setdefault(key, value)
    return DecodeConfig(options=options, **values)


def inverse_sqrt_schedule(warmup_steps: int):
    """Multiplier ``step / warmup`` during warm-up, then ``sqrt(warmup / step)``."""
    warmup = max(1, warmup_steps)

    def multiplier(step: int) -> float:
        step = step + 1
        return step / warmup if step < warmup else math.sqrt(warmup / step)

    return multiplier


@dataclass
class FamilyOptions:
    """Settings only one family has (none for the autoregressive baseline)."""


@dataclass
class Translation:
    """Output of ``translate``: one text per input line, plus the decoders' accounting."""

    texts: list[str]
    passes: int
    hit_cap: int
    truncated: list[int]
    """0-based indices of inputs cut to the model's maximum length."""
    counts: dict[str, int] = field(default_factory=dict)
    """The decoder's ``DecodeResult.counts`` summed over batches."""
    details: list[dict[str, Any]] = field(default_factory=list)
    """With ``details=True``, per input line: ``tokens`` (output ids), ``score`` (None
    where the decoder has none), ``passes`` (sequential passes of the batch that held
    the line), ``history`` (texts after each refinement pass, when the decoder keeps
    it), ``nbest`` (beam search: ``{text, tokens, score}``, best first)."""


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps had a NaN/inf loss or gradient."""


class Seq2SeqModule(L.LightningModule):
    """Shared training and inference plumbing; a family adds ``loss`` and ``generate``."""

    family: ClassVar[str] = ""
    options_class: ClassVar[type] = FamilyOptions
    decoding_options: ClassVar[type[DecodingOptions]] = DecodingOptions
    """The family's decoder options: a dataclass extending ``DecodingOptions``, one
    field per option with its type, default and docstring."""
    decode_defaults: ClassVar[dict[str, Any]] = option_defaults(DecodingOptions)
    """Every decoder option the family takes, with its default (from
    ``decoding_options``)."""
    selection_metric: ClassVar[str] = "val_bleu"
    """The validation metric (higher is better) that picks the best checkpoints."""
    needs_init_from: ClassVar[bool] = False
    """The family trains on top of another checkpoint's core (``trainer.init_from``)."""
    legacy_decode_keys: ClassVar[tuple[str, ...]] = ()
    """Decoder settings that older checkpoints kept beside ``decode.options`` and this
    family reads into them."""
    speed_baseline: ClassVar[bool] = False
    """Its plain greedy and beam rows are the baselines a bench's speed-ups are taken
    against (the autoregressive family)."""
    incremental: ClassVar[bool] = False
    """The family decodes token by token through a KV cache (what ``nargen bench
    kv-cache`` and the evaluation's cache footprint measure)."""
    NONFINITE_CHECK_EVERY: ClassVar[int] = 16
    """Updates between reads of the non-finite guard's count on an accelerator."""

    def __init__(
        self,
        model_config: TransformerConfig,
        tokenizer: Tokenizer,
        optim: OptimConfig | None = None,
        decode: DecodeConfig | None = None,
        data_signature: dict[str, Any] | None = None,
        family_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            self.options = self.options_class(**(family_options or {}))
        except TypeError as err:
            raise ValueError(f"bad family_options for {self.family}: {err}") from None
        if model_config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"model vocab_size={model_config.vocab_size} but tokenizer has {tokenizer.vocab_size}"
            )
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.optim = optim or OptimConfig()
        self.decode_config = decode or DecodeConfig()
        self.data_signature = data_signature or {}
        special = tokenizer.special
        self.ids = SpecialIds(pad=special.pad, bos=special.bos, eos=special.eos)
        self.model = Seq2SeqTransformer(model_config, pad_id=special.pad)
        self._val_hyps: dict[int, str] = {}
        # the non-finite guard's counts, kept on the training device
        self.register_buffer("_skipped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_nonfinite_run", torch.zeros((), dtype=torch.long), persistent=False)

    # ---- to be provided by a family -------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        raise NotImplementedError

    # ---- training ---------------------------------------------------------------------
    def compile_loss(self) -> None:
        """Replace this module's ``loss`` by its ``torch.compile`` (shapes dynamic): the
        forward and backward of every training step run as compiled kernels; validation
        decoding stays eager."""
        self.loss = torch.compile(self.loss, dynamic=True)  # type: ignore[method-assign]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["src"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when any gradient is NaN/inf (a NaN loss gives NaN gradients).

        Gradients are already summed across ranks here, so every rank decides alike. The
        fused AdamW skips the update itself when told through ``found_inf`` (a device
        flag, as a gradient scaler tells it), so nothing is read back; another optimizer
        gets no gradients instead, which costs a read. The run of consecutive skipped
        steps is counted on the device and read every step on a CPU (where a read is
        free), every ``NONFINITE_CHECK_EVERY`` updates elsewhere.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        bad = ~torch.isfinite(total)
        if getattr(optimizer, "defaults", {}).get("fused"):
            optimizer.found_inf = bad.float()
        elif bool(bad):
            for p in self.parameters():
                p.grad = None
        self._nonfinite_run = torch.where(bad, self._nonfinite_run + 1, 0)
        self._skipped = self._skipped + bad.long()
        if self.device.type != "cpu" and self.global_step % self.NONFINITE_CHECK_EVERY:
            return
        run, limit = int(self._nonfinite_run), self.optim.max_nonfinite_steps
        if run:
            self.log("skipped_steps", float(self.skipped_steps), prog_bar=True)
        if run >= limit:
            first = self.global_step - run + 1
            raise NonFiniteTrainingError(
                f"training stopped at step {self.global_step}: {run} consecutive "
                f"steps ({first} to {self.global_step}) with a non-finite loss or gradient "
                f"(optim.max_nonfinite_steps={limit})"
            )

    @property
    def skipped_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient so far (a device read)."""
        return int(self._skipped)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        # The fused kernel updates every parameter in one call (CPU and CUDA): the
        # default per-tensor loop costs ~12 small operator calls per parameter tensor.
        trained = [p for p in self.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") for p in trained)
        optimizer = torch.optim.AdamW(
            trained, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
            weight_decay=o.weight_decay, fused=fused,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(o.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- validation -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_hyps = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Validation leaves the global RNG as it found it (a family's loss may draw
        # random masks), so resuming after a checkpoint replays training exactly.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._validate(batch)

    def _validate(self, batch: dict[str, torch.Tensor]) -> DecodeResult:
        for name, (value, weight) in self.validation_metrics(batch).items():
            self.log(name, value, batch_size=weight, sync_dist=True)
        result = self.generate(batch["src"], **self.decode_config.validation)
        texts = self.tokenizer.decode(result.as_lists(self.ids.pad))
        for index, text in zip(batch["index"].tolist(), texts):
            self._val_hyps[index] = text
        return result

    def on_validation_epoch_end(self) -> None:
        refs = getattr(self.trainer.datamodule, "valid_refs", None) if self._trainer else None
        if not refs:
            return
        hyps = self._val_hyps
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[dict[int, str]] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, hyps)
            hyps = {k: v for part in gathered for k, v in part.items()}
        ordered = [i for i in range(len(refs)) if i in hyps]
        bleu = sacrebleu.corpus_bleu([hyps[i] for i in ordered], [[refs[i] for i in ordered]])
        # Every rank computed the same score from all ranks' outputs; averaging keeps it.
        self.log("val_bleu", bleu.score, prog_bar=True, sync_dist=True)

    # ---- inference --------------------------------------------------------------------
    def source_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of raw source texts as the model reads them: cut to its maximum
        length, EOS appended."""
        limit = self.model_config.max_len - 1
        return [ids[:limit] + [EOS] for ids in self.tokenizer.encode(texts)]

    def source_tensor(self, ids: list[list[int]]) -> torch.Tensor:
        """Right-padded ``[batch, longest]`` source tensor on the module's device."""
        return pad_sequences([torch.tensor(x, dtype=torch.long) for x in ids], PAD).to(self.device)

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Raw source texts to the padded tensor ``generate`` and the decoders take."""
        return self.source_tensor(self.source_ids(texts))

    @torch.no_grad()
    def translate(
        self, sentences: list[str], *, max_tokens: int | None = None, details: bool = False,
        progress: Callable[[int], Any] | None = None, **options: Any,
    ) -> Translation:
        """Translate raw sentences in batches of at most ``max_tokens`` source tokens
        (default: ``decode_config.max_tokens``); one output each.

        Empty inputs give empty outputs; inputs longer than the model's maximum are cut
        (their indices are reported in ``truncated``). Options go to ``generate``;
        ``details`` adds per-line tokens, scores, history and n-best lists;
        ``progress`` is called with the number of sentences each batch finished.
        """
        was_training = self.training
        if was_training:  # eval()/train() walk every submodule: not on each call
            self.eval()
        limit = self.model_config.max_len - 1
        encoded = self.tokenizer.encode(sentences)
        truncated = [i for i, ids in enumerate(encoded) if len(ids) > limit]
        encoded = [ids[:limit] for ids in encoded]
        texts = [""] * len(sentences)
        info: list[dict[str, Any]] = [
            {"tokens": [], "score": None, "passes": 0, "history": [], "nbest": []} for _ in sentences
        ] if details else []
        todo = [i for i, ids in enumerate(encoded) if ids]
        batches = token_budget_batches([len(encoded[i]) + 1 for i in todo],
                                       max_tokens or self.decode_config.max_tokens)
        passes = hit_cap = 0
        counts: dict[str, int] = {}
        compiled = self.model.compiled_passes
        self.model.compiled_passes = self.decode_options(options)["compile"]
        try:
            for batch in batches:
                rows = [todo[j] for j in batch]
                src = self.source_tensor([encoded[i] + [EOS] for i in rows])
                result = self.generate(src, **options)
                passes += result.passes
                for key, value in result.counts.items():
                    counts[key] = counts.get(key, 0) + value
                hit_cap += int(result.hit_cap.sum())
                outputs = result.as_lists(self.ids.pad)
                for i, text in zip(rows, self.tokenizer.decode(outputs)):
                    texts[i] = text
                if details:
                    self._add_details(info, rows, outputs, result)
                if progress is not None:
                    progress(len(rows))
        finally:
            self.model.compiled_passes = compiled
            if was_training:
                self.train()
        return Translation(texts=texts, passes=passes, hit_cap=hit_cap, truncated=truncated,
                           counts=counts, details=info)

    def _add_details(
        self, info: list[dict[str, Any]], rows: list[int], outputs: list[list[int]], result: DecodeResult
    ) -> None:
        pad = self.ids.pad
        history = [self.tokenizer.decode([[t for t in row if t != pad] for row in h.tolist()])
                   for h in result.history]
        for j, i in enumerate(rows):
            info[i]["tokens"] = outputs[j]
            info[i]["passes"] = result.passes
            if result.scores is not None:
                info[i]["score"] = float(result.scores[j])
            info[i]["history"] = [texts[j] for texts in history]
            if result.nbest:
                hyps = result.nbest[j]
                info[i]["nbest"] = [{"text": text, "tokens": tokens, "score": score} for text, (tokens, score)
                                    in zip(self.tokenizer.decode([t for t, _ in hyps]), hyps)]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.decode_defaults = option_defaults(cls.decoding_options)

    @classmethod
    def check_options(cls, options: Any, where: str, from_code: bool = False) -> None:
        """Raise ``ValueError`` naming ``where`` when ``options`` holds an option this
        family does not take (or one only code passes, a loaded drafter or reranker,
        unless ``from_code``) or a value of the wrong type."""
        check_options(cls.decoding_options, cls.family, options, where, from_code)

    def decoder_settings(self) -> dict[str, Any]:
        """This checkpoint's own settings (special ids, length limits, banned ids) for
        the family's decoder in ``nargen.decoding``, so research code calling it directly
        decodes as ``generate`` and the CLI do."""
        return {"ids": self.ids}

    # ---- capabilities (a family overrides what it offers) -----------------------------
    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor | float, int]]:
        """What each validation batch logs, name to (value, weight), averaged over the
        validation set by weight: ``val_loss`` (the training loss, weighted by
        sentences) and what a family adds (e.g. a per-token figure weighted by the
        batch's tokens)."""
        return {"val_loss": (self.loss(batch), batch["src"].shape[0])}

    def nbest_size(self, options: dict[str, Any]) -> int:
        """Hypotheses per sentence a decoding with ``options`` returns (``nbest``)."""
        return 1

    def diagnostics(self, run: Any) -> dict[str, Any] | None:
        """The family's sections of ``nargen diagnose`` for ``run``
        (``nargen.diagnose.DiagnosticRun``), built from that module's sections; None:
        the family has none."""
        return None

    def as_drafter(self) -> Any:
        """This checkpoint as the drafter of speculative decoding
        (``nargen.decoding.speculative.Drafter``): by default it drafts each sentence
        once with its own decoding settings, realigned to the output so far."""
        from nargen.decoding.speculative import OnePassDrafter

        return OnePassDrafter(self)

    def decode_options(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The decoder settings a call uses: the family's defaults, then this checkpoint's
        ``decode.options``, then ``options``. An option the family does not take, or a
        value of the wrong type, raises ``ValueError`` naming the family and the option."""
        options = dict(options or {})
        self.check_options(options, "decoding", from_code=True)
        return {**self.decode_defaults, **self.decode_config.options, **options}

    # ---- checkpoint metadata ----------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild this module from a checkpoint alone."""
        return {
            "family": self.family,
            "family_module": type(self).__module__,  # imported on loading when not yet registered
            "model_config": self.model_config.to_dict(),
            "tokenizer": self.tokenizer.model_bytes,
            "special_ids": asdict(self.tokenizer.special),
            "optim": {**asdict(self.optim), "betas": list(self.optim.betas)},
            "decode": asdict(self.decode_config),
            "data_signature": self.data_signature,
            "family_options": asdict(self.options),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nargen"] = self.metadata()

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "Seq2SeqModule":
        optim = dict(meta["optim"])
        optim["betas"] = tuple(optim["betas"])
        return cls(
            TransformerConfig.from_dict(meta["model_config"]),
            Tokenizer(meta["tokenizer"]),
            OptimConfig(**optim),
            decode_config_from_metadata(cls.legacy_decode_keys, meta["decode"]),
            meta.get("data_signature"),
            meta.get("family_options"),
        )
