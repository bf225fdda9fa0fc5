"""Latent Transformer (Kaiser et al. 2018; EMA vector quantization as in Roy et al.
2018) on the shared core: the target, read with the source, is compressed into
``ceil(n / 2^c)`` discrete latents; a parallel decoder writes every target token from
the source and the latents in one pass; a small autoregressive prior predicts the
latents from the source. Decoding: the prior (greedy or beam), then one decoder pass.

Length: the decoder's length is fixed by the latents up to the last chunk; a small head
on the last latent predicts how many of that chunk's ``2^c`` positions are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nargen.core import Encoded, Seq2SeqTransformer
from nargen.decoding import DecodeResult, SpecialIds, beam_search, greedy, sample
from nargen.decoding.protocol import pad_rows
from nargen.decoding.options import CALL_ONLY, LengthCapOptions, SamplingOptions
from nargen.latent import QuantizerConfig, VectorQuantizer
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family

PRIOR_IDS = SpecialIds(pad=0, bos=1, eos=2)
PRIOR_OFFSET = 3  # latent word w has prior id w + 3


@dataclass
class LatentOptions:
    compression: int = 2
    """c: one latent per 2^c target tokens."""
    codebook_size: int = 64
    groups: int = 1
    """Decomposed quantization; the prior's vocabulary is codebook_size ** groups."""
    commitment: float = 0.25
    decay: float = 0.99
    dead_threshold: float = 0.01
    latent_layers: int = 2
    """Bidirectional decoder layers that read the target before compression."""
    prior_layers: int = 2
    prior_start_steps: int = 0
    """Updates before the prior starts learning (the autoencoder first)."""

    def __post_init__(self) -> None:
        if not 1 <= self.compression <= 4:
            raise ValueError(f"compression must be 1..4, got {self.compression}")
        if self.codebook_size ** self.groups > 65536:
            raise ValueError("codebook_size ** groups must be at most 65536 (the prior's vocabulary)")

    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig(codebook_size=self.codebook_size, groups=self.groups,
                               commitment=self.commitment, decay=self.decay,
                               dead_threshold=self.dead_threshold)


class LatentPrior:
    """The autoregressive prior over latent words, reading the main encoder's output
    (the ``Seq2SeqModel`` protocol, so ``nargen.decoding`` greedy/beam run it); a view
    of modules the ``LatentModule`` owns."""

    def __init__(self, encoder: Seq2SeqTransformer, decoder: Seq2SeqTransformer,
                 encoded: Encoded | None = None) -> None:
        self.encoder, self.decoder, self.encoded = encoder, decoder, encoded

    def given(self, encoded: Encoded) -> "LatentPrior":
        """The same prior reading an encoding already computed (of the source it will
        be given), so that the prior and the token decoder share one encoder pass."""
        return LatentPrior(self.encoder, self.decoder, encoded)

    def encode(self, src: torch.Tensor) -> Encoded:
        return self.encoder.encode(src) if self.encoded is None else self.encoded

    def decode(self, tgt: torch.Tensor, encoded: Encoded, *, causal: bool = True, cache: Any = None) -> torch.Tensor:
        return self.decoder.decode(tgt, encoded, causal=causal, cache=cache)

    def new_cache(self, encoded: Encoded, capacity: int):
        return self.decoder.new_cache(encoded, capacity)


def prior_words_of(rows: list[list[int]]) -> list[list[int]]:
    """Latent words from the prior's output ids (its special ids dropped)."""
    return [[w - PRIOR_OFFSET for w in row if w >= PRIOR_OFFSET] for row in rows]


@dataclass
class LatentDecoding(LengthCapOptions, SamplingOptions):
    """The prior decodes the latent codes (greedy, beam or sampled), then one parallel
    pass decodes the tokens; sampling options apply to the prior."""

    latent_beam: int = 1
    """The prior's beam; with ``rerank`` its k best latent sequences (or k samples, with
    ``sampling``) are decoded and rescored."""
    rerank: Any = field(default=None, metadata=CALL_ONLY)
    """A ``nargen.decoding.Reranker`` that picks among the latent candidates."""


@register_family
class LatentModule(Seq2SeqModule):
    family = "latent"
    options_class = LatentOptions
    legacy_decode_keys = ("max_len_a", "max_len_b")
    decoding_options = LatentDecoding
    DIAGNOSED_LATENTS = ("prior greedy", "prior beam 4", "prior greedy, oracle count", "oracle latents")
    """The latents ``nargen diagnose`` decodes from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg, o = self.model_config, self.options
        d = cfg.d_model
        # decoder stacks of the core; their own (2-row) embeddings are unused
        self.latent_reader = Seq2SeqTransformer(
            replace(cfg, vocab_size=2, encoder_layers=0, decoder_layers=o.latent_layers, share_decoder_kv=False))
        self.compress = nn.ModuleList(nn.Conv1d(d, d, kernel_size=2, stride=2) for _ in range(o.compression))
        self.quantizer = VectorQuantizer(d, o.quantizer())
        self.length_head = nn.Linear(d, 2 ** o.compression)
        self.prior_decoder = Seq2SeqTransformer(replace(
            cfg, vocab_size=o.codebook_size ** o.groups + PRIOR_OFFSET, encoder_layers=0,
            decoder_layers=o.prior_layers, share_decoder_kv=False))
        self.prior = LatentPrior(self.model, self.prior_decoder)
        self.chunk = 2 ** o.compression

    # ---- latents --------------------------------------------------------------------
    def latent_states(self, encoded: Encoded, target: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target read with the source, halved ``c`` times: ``[batch, m, d]`` and the
        latent mask (``m = ceil(n / 2^c)``)."""
        h = self.latent_reader.decode_hidden(self.model.embed_tokens(target), encoded, causal=False, tgt_mask=real)
        mask = real
        for conv in self.compress:
            if h.shape[1] % 2:
                h = F.pad(h, (0, 0, 0, 1))
                mask = F.pad(mask, (0, 1), value=False)
            h = conv((h * mask[..., None]).transpose(1, 2)).transpose(1, 2)
            mask = mask[:, 0::2] | mask[:, 1::2]
        return h, mask

    def words(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., groups]`` to one latent word each."""
        base = self.options.codebook_size ** torch.arange(self.options.groups, device=codes.device)
        return (codes * base).sum(-1)

    def codes(self, words: torch.Tensor) -> torch.Tensor:
        k, g = self.options.codebook_size, self.options.groups
        return torch.stack([(words // k ** i) % k for i in range(g)], dim=-1)

    def decode_tokens(
        self, encoded: Encoded, latents: torch.Tensor, lengths: torch.Tensor, width: int | None = None
    ) -> torch.Tensor:
        """Logits ``[batch, width, vocab]`` of every target position (``width``: the
        longest length by default) from the source and the latent vectors."""
        return self.model.output_logits(self.token_hidden(encoded, latents, lengths, width))

    def token_hidden(
        self, encoded: Encoded, latents: torch.Tensor, lengths: torch.Tensor, width: int | None = None
    ) -> torch.Tensor:
        """The decoder's final hidden states behind ``decode_tokens``' logits."""
        if width is None:
            width = int(lengths.max()) if lengths.numel() else 1
        inputs = latents.repeat_interleave(self.chunk, dim=1)[:, :width]
        if inputs.shape[1] < width:
            inputs = F.pad(inputs, (0, 0, 0, width - inputs.shape[1]))
        real = torch.arange(width, device=lengths.device)[None] < lengths[:, None]
        inputs = self.model.dropout(self.model.add_positions(inputs))
        return self.model.decode_hidden(inputs, encoded, causal=False, tgt_mask=real)

    def lengths_from(self, latents: torch.Tensor, latent_mask: torch.Tensor) -> torch.Tensor:
        m = latent_mask.sum(1)
        last = latents[torch.arange(latents.shape[0], device=latents.device), (m - 1).clamp(min=0)]
        return self.chunk * (m - 1) + 1 + self.length_head(last).argmax(-1)

    # ---- training -------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token cross-entropy from quantized latents + length of the last chunk +
        commitment; plus the prior's cross-entropy on the (detached) latent words once
        ``prior_start_steps`` have passed."""
        target = batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        lengths = real.sum(1)
        encoded = self.model.encode(batch["src"])
        states, latent_mask = self.latent_states(encoded, target, real)
        q = self.quantizer(states, latent_mask)
        hidden = self.token_hidden(encoded, q.vectors, lengths, target.shape[1])
        token_loss = self.model.output_loss(hidden[real], target[real], self.optim.label_smoothing)
        m = latent_mask.sum(1)
        last = q.vectors[torch.arange(len(m), device=m.device), m - 1]
        length_loss = F.cross_entropy(self.length_head(last).float(), lengths - 1 - self.chunk * (m - 1))
        loss = token_loss + length_loss + q.commitment_loss
        if self.training and self._trainer is not None:
            self.log("codebook_perplexity", q.perplexity, batch_size=len(m))
            self.log("codebook_live", q.live_share, batch_size=len(m))
        if self.global_step >= self.options.prior_start_steps:
            loss = loss + self.prior_loss(encoded, self.words(q.codes).detach(), latent_mask)
        return loss

    def prior_loss(self, encoded: Encoded, words: torch.Tensor, latent_mask: torch.Tensor) -> torch.Tensor:
        m = latent_mask.sum(1)
        ids = (words + PRIOR_OFFSET).masked_fill(~latent_mask, PRIOR_IDS.pad)
        bos = torch.full_like(ids[:, :1], PRIOR_IDS.bos)
        tgt_in = torch.cat([bos, ids], 1)
        tgt_out = torch.cat([ids, torch.full_like(bos, PRIOR_IDS.pad)], 1).scatter(1, m[:, None], PRIOR_IDS.eos)
        logits = self.prior_decoder.decode(tgt_in, encoded, causal=True).float()
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PRIOR_IDS.pad)

    # ---- inference ------------------------------------------------------------------
    @torch.no_grad()
    def decode_from_codes(self, src: torch.Tensor, encoded: Encoded, words: list[list[int]]) -> torch.Tensor:
        """One parallel decoder pass from latent words (one list per sentence; e.g. the
        prior's, or ``oracle_words`` of the references for the oracle-latent bound)."""
        ids = pad_rows([w or [0] for w in words], -1, src.device)
        latent_mask = ids >= 0
        latents = self.quantizer.lookup(self.codes(ids.clamp(min=0)))
        lengths = self.lengths_from(latents, latent_mask)
        logits = self.decode_tokens(encoded, latents, lengths).float()
        special = self.tokenizer.special
        logits[..., [self.ids.pad, self.ids.bos, self.ids.eos, special.mask, special.blank]] = float("-inf")
        tokens = logits.argmax(-1)
        real = torch.arange(tokens.shape[1], device=src.device)[None] < lengths[:, None]
        return tokens.masked_fill(~real, self.ids.pad)

    @torch.no_grad()
    def oracle_words(self, src: torch.Tensor, target: torch.Tensor) -> list[list[int]]:
        """The autoencoder's latent words of reference targets (padded ``[batch, n]``)."""
        real = target != self.ids.pad
        encoded = self.model.encode(src)
        states, latent_mask = self.latent_states(encoded, target, real)
        words = self.words(self.quantizer.nearest(states.reshape(-1, self.options.groups, self.quantizer.part).float())
                           .reshape(*states.shape[:2], self.options.groups))
        return [w[mask].tolist() for w, mask in zip(words, latent_mask)]

    @torch.no_grad()
    def prior_words(self, src: torch.Tensor, beam: int = 1, *, encoded: Encoded | None = None,
                    **options: Any) -> tuple[list[list[int]], int]:
        """Latent words predicted by the prior (greedy, beam search, or with ``sampling``
        drawn at ``temperature`` from the ``top_k`` most likely), and its passes;
        ``encoded``: the source's encoding, if already computed."""
        o = self.decode_options(options)
        caps = self.decoder_settings(o)
        prior = self.prior if encoded is None else self.prior.given(encoded)
        if o["sampling"]:
            prior = sample(prior, src, temperature=o["temperature"], top_k=o["top_k"], seed=o["seed"], **caps)
        elif beam <= 1:
            prior = greedy(prior, src, **caps)
        else:
            prior = beam_search(prior, src, beam=beam, **caps)
        words = prior_words_of(prior.as_lists(PRIOR_IDS.pad))
        return words, prior.passes

    @torch.no_grad()
    def prior_words_of_count(self, src: torch.Tensor, counts: torch.Tensor) -> list[list[int]]:
        """The prior's greedy latent words when each sentence must have ``counts[i]`` of
        them (its end step held back until then, then forced): the prior's content
        choices with the latent length given, for telling length errors from content
        errors."""
        counts = counts.to(src.device)
        step = 0

        def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            nonlocal step
            wanted = counts[rows]
            logits = logits.clone()
            logits[step < wanted, PRIOR_IDS.eos] = float("-inf")
            chosen = logits.argmax(-1).masked_fill(step >= wanted, PRIOR_IDS.eos)
            step += 1
            return chosen

        caps = {"max_len_a": 0.0, "max_len_b": int(counts.max()) + 1, "max_len": int(counts.max()) + 2}
        return prior_words_of(greedy(self.prior, src, ids=PRIOR_IDS, pick=pick, **caps).as_lists(PRIOR_IDS.pad))

    def decoder_settings(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The prior's ids and length caps (in latents), for ``greedy``, ``beam_search``
        or ``sample`` over ``self.prior``."""
        o = self.decode_options(options)
        return {"ids": PRIOR_IDS, "max_len_a": o["max_len_a"] / self.chunk,
                "max_len_b": max(2, o["max_len_b"] // self.chunk), "max_len": self.model_config.max_len}

    @torch.no_grad()
    def prior_candidates(self, src: torch.Tensor, k: int, *, encoded: Encoded | None = None,
                         **options: Any) -> tuple[list[list[list[int]]], int]:
        """``k`` latent word sequences per sentence: the prior beam's ``k`` best, or with
        ``sampling`` ``k`` draws (fewer finished beams are repeated); and the passes.
        ``encoded``: the source's encoding, if already computed."""
        o = self.decode_options(options)
        caps = self.decoder_settings(o)
        if encoded is None:
            encoded = self.model.encode(src)
        if o["sampling"]:
            rows = torch.arange(src.shape[0], device=src.device).repeat_interleave(k)
            drawn = sample(self.prior.given(encoded.index_select(rows)), src.repeat_interleave(k, 0),
                           temperature=o["temperature"], top_k=o["top_k"], seed=o["seed"], **caps)
            words = prior_words_of(drawn.as_lists(PRIOR_IDS.pad))
            return [words[i * k:(i + 1) * k] for i in range(src.shape[0])], drawn.passes
        beams = beam_search(self.prior.given(encoded), src, beam=k, **caps)
        out = []
        for hyps in beams.nbest:
            words = prior_words_of([tokens for tokens, _ in hyps[:k]])
            out.append(words + [words[-1]] * (k - len(words)))
        return out, beams.passes

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Latent words from the prior (``latent_beam`` 1: greedy), then one pass. With
        ``rerank`` (e.g. ``autoregressive_reranker``), the prior's ``latent_beam`` best
        latent sequences (or as many samples, with ``sampling``) are all decoded in one
        batched pass and the reranker's best is returned (its pass counted)."""
        o = self.decode_options(options)  # also checks every option
        beam, rerank = o["latent_beam"], o["rerank"]
        prior_options = {k: v for k, v in options.items() if k not in ("latent_beam", "rerank")}
        no_cap = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        encoded = self.model.encode(src)  # one encoder pass for the prior and the decoder
        if rerank is None:
            words, passes = self.prior_words(src, beam, encoded=encoded, **prior_options)
            tokens = self.decode_from_codes(src, encoded, words)
            return DecodeResult(tokens=tokens, passes=passes + 1, hit_cap=no_cap)
        candidates, passes = self.prior_candidates(src, beam, encoded=encoded, **prior_options)
        rows = src.repeat_interleave(beam, 0)
        copies = torch.arange(src.shape[0], device=src.device).repeat_interleave(beam)
        tokens = self.decode_from_codes(rows, encoded.index_select(copies), [w for c in candidates for w in c])
        scores = rerank(rows, tokens).view(src.shape[0], beam)
        best = scores.argmax(1)  # the first of equal scores
        chosen = tokens.view(src.shape[0], beam, -1)[torch.arange(src.shape[0], device=src.device), best]
        width = int((chosen != self.ids.pad).sum(1).max()) if chosen.numel() else 0
        return DecodeResult(tokens=chosen[:, :width], passes=passes + 2, hit_cap=no_cap,
                            scores=scores.gather(1, best[:, None])[:, 0])

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """Prior latents (greedy, beam 4, greedy with the reference's latent count) against
        oracle latents: BLEU, codebook usage, the passes one sentence needs alone (prior: its
        latents + the end step, then the decoder pass, also when held to the reference's
        count; with the reference's latents, which a real decoding does not have: the decoder
        pass) and BLEU by reference length."""
        from nargen.diagnose import bleu_by_length, decode_all, passes_by_length, scored

        module, batches, references, log = self, run.batches, run.references, run.log
        ref_lengths = [0] * len(references)
        for b in batches:
            for i, n in zip(b.rows, b.ref_lengths.tolist()):
                ref_lengths[i] = n
        rows = []
        for name in self.DIAGNOSED_LATENTS:
            used: list[torch.Tensor] = []
            latents: dict[int, int] = {}

            def decode(b: Any, name: str = name) -> DecodeResult:
                if name == "oracle latents":
                    words, passes = module.oracle_words(b.src, b.ref), 0
                elif name == "prior greedy, oracle count":
                    counts = torch.tensor([len(w) for w in module.oracle_words(b.src, b.ref)], device=b.src.device)
                    words, passes = module.prior_words_of_count(b.src, counts), 0
                else:
                    words, passes = module.prior_words(b.src, 4 if "beam" in name else 1)
                used.append(torch.tensor([w for row in words for w in row], dtype=torch.long, device=b.src.device))
                latents.update((i, len(w)) for i, w in zip(b.rows, words))
                tokens = module.decode_from_codes(b.src, module.model.encode(b.src), words)
                return DecodeResult(tokens=tokens, passes=passes + 1,
                                    hit_cap=torch.zeros(len(b.rows), dtype=torch.bool, device=b.src.device))

            decoded = decode_all(module, batches, decode, lambda r, s: r.passes)
            prior_runs = name != "oracle latents"  # held to a count or not, the prior steps once a latent
            decoded.passes = [latents[i] + 2 if prior_runs else 1 for i in range(len(references))]
            words = torch.cat(used)
            codes = module.codes(words)
            perplexity, live = module.quantizer.usage(codes.reshape(-1, module.options.groups))
            rows.append({"latents": name, **scored(module, decoded, references),
                         "mean_latents": round(statistics.fmean(latents.values()), 2),
                         "codebook_perplexity": round(float(perplexity), 2), "live_codes": round(float(live), 4),
                         "bleu_by_length": bleu_by_length(module, decoded, references, ref_lengths),
                         "passes_by_length": passes_by_length(decoded) if prior_runs else []})
            log(f"latent {name}: BLEU {rows[-1]['bleu']}")
        return {"latent_sources": rows}
