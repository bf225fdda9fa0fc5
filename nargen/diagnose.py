"""Diagnostics for parallel decoders (``nargen diagnose``): what an oracle length and an
oracle order would buy, and which order a model chooses for itself.

- Oracle length (NAT, CMLM): BLEU with the reference's length given, against the
  predicted length with length beams 1 and 5, at each number of iterations.
- Order policies (CMLM): mask-predict with the reference length given (so positions
  line up with the reference), where after each iteration a policy chooses which of
  the model's own tokens are kept: confidence (mask-predict's own), random,
  left-to-right, easiest-first (an AR teacher's token loss on the reference), oracle
  (tokens equal to the reference first, then confidence) and oracle-all (keep every
  right token, mask every wrong one, ignoring the schedule).
- Learned order (CMLM, insertion): the pass at which each output position was
  committed, against left-to-right and the balanced tree (Kendall's tau-b, mean over
  sentences of two or more tokens).
- Insertion: BLEU and passes of parallel and sequential decoding against
  ``ceil(log2(n + 1)) + 1``, the passes of a perfect balanced-tree decoder; and BLEU,
  output length and passes against the end-of-slot penalty (how much a model loses to
  closing slots too early; run it on a validation set to choose the penalty).
- CTC and DAG (single pass, no length or order to give): their decoders side by side.
- Latent: BLEU from the prior's latents (greedy and beam 4; greedy held to the
  reference's number of latents) against the autoencoder's latents of the reference
  (oracle latents: an upper bound), codebook usage (perplexity,
  live codes) of each, sequential passes (latents + the prior's end step + the decoder
  pass) and BLEU by reference length, where the gap between prior and oracle opens.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nargen.data.batching import token_budget_batches
from nargen.decoding import DecodeResult, mask_predict
from nargen.orderings.commitment import (
    RemaskPolicy, by_priority, confidence, left_to_right, oracle, oracle_all, random_order,
)
from nargen.evaluation import score
from nargen.models.base import DecodeConfig, Seq2SeqModule
from nargen.models.registry import FAMILIES
from nargen.orderings import balanced_tree, kendall_tau
from nargen.orderings import left_to_right as left_to_right_order
from nargen.bench import reports
from nargen.plotting import Chart, Line
from nargen.bench.reports import by_length

POLICIES = ("confidence", "random", "left_to_right", "easiest_first", "oracle", "oracle_all")


@dataclass
class Batch:
    """Sentences ``rows`` of the test set: padded source and reference ids."""

    rows: list[int]
    src: torch.Tensor
    ref: torch.Tensor  # [batch, ref_len] padded with pad
    ref_lengths: torch.Tensor  # [batch]


def make_batches(
    module: Seq2SeqModule, sources: list[str], references: list[str], max_tokens: int
) -> list[Batch]:
    """Source-token-budget batches holding each sentence's source and reference ids
    (both cut to the model's maximum length)."""
    limit = module.model_config.max_len - 1
    src_ids = module.source_ids(sources)
    ref_ids = [ids[:limit] for ids in module.tokenizer.encode(references)]
    batches = []
    for rows in token_budget_batches([len(s) for s in src_ids], max_tokens):
        src = module.source_tensor([src_ids[i] for i in rows])
        ref = module.source_tensor([ref_ids[i] or [module.ids.pad] for i in rows])
        lengths = torch.tensor([max(1, len(ref_ids[i])) for i in rows], device=module.device)
        batches.append(Batch(rows, src, ref, lengths))
    return batches


@dataclass
class Decoded:
    """Outputs of one decoding of the whole test set, in test-set order."""

    tokens: list[list[int]]
    schedules: list[list[int]]
    passes: list[int]  # sequential passes per sentence


def decode_all(
    module: Seq2SeqModule, batches: list[Batch], decode: Callable[[Batch], DecodeResult],
    passes_of: Callable[[DecodeResult, list[int]], int],
) -> Decoded:
    """Run ``decode`` on every batch; ``passes_of(result, schedule_row)`` gives one
    sentence's passes."""
    n = sum(len(b.rows) for b in batches)
    tokens: list[list[int]] = [[] for _ in range(n)]
    schedules: list[list[int]] = [[] for _ in range(n)]
    passes = [0] * n
    pad = module.ids.pad
    for batch in batches:
        result = decode(batch)
        rows = result.as_lists(pad)
        steps = result.schedule.tolist() if result.schedule is not None else [[] for _ in rows]
        for i, row, step in zip(batch.rows, rows, steps):
            tokens[i] = row
            schedules[i] = [s for s in step if s >= 0][: len(row)]
            passes[i] = passes_of(result, schedules[i])
    return Decoded(tokens, schedules, passes)


def scored(module: Seq2SeqModule, decoded: Decoded, references: list[str]) -> dict[str, Any]:
    """BLEU and chrF (with signatures), mean passes and mean output length."""
    texts = module.tokenizer.decode(decoded.tokens)
    return {
        **score(texts, references),
        "mean_passes": round(statistics.fmean(decoded.passes), 2),
        "mean_length": round(statistics.fmean(len(t) for t in decoded.tokens), 2),
    }


def learned_order(decoded: Decoded) -> dict[str, Any]:
    """Mean Kendall tau-b of the committed order against left-to-right and the
    balanced tree, over sentences where it is defined (two or more positions, not all
    committed at once)."""
    taus: dict[str, list[float]] = {"left_to_right": [], "balanced_tree": []}
    for schedule in decoded.schedules:
        if len(schedule) < 2:
            continue
        s = torch.tensor(schedule)
        for name, reference in (("left_to_right", left_to_right_order), ("balanced_tree", balanced_tree)):
            tau = kendall_tau(s, reference(schedule))
            if not math.isnan(tau):
                taus[name].append(tau)
    return {
        **{f"tau_{name}": round(statistics.fmean(v), 3) if v else None for name, v in taus.items()},
        "sentences": len(taus["left_to_right"]),
    }


def teacher_token_losses(teacher: Seq2SeqModule, batch: Batch) -> torch.Tensor:
    """An autoregressive teacher's cross-entropy of each reference token given the
    source and the reference before it, ``[batch, ref_len]`` (inf on padding)."""
    ref = batch.ref
    bos = torch.full_like(ref[:, :1], teacher.ids.bos)
    with torch.inference_mode():
        logits = teacher.model(batch.src, torch.cat([bos, ref[:, :-1]], dim=1)).float()
    losses = -logits.log_softmax(-1).gather(2, ref[..., None]).squeeze(-1)
    real = torch.arange(ref.shape[1], device=ref.device)[None] < batch.ref_lengths[:, None]
    return losses.masked_fill(~real, float("inf"))


def _policy(name: str, batch: Batch, teacher: Seq2SeqModule | None, seed: int) -> RemaskPolicy:
    if name == "confidence":
        return confidence
    if name == "random":  # a different draw for every batch, the same on every run
        return random_order(seed * 1_000_003 + batch.rows[0])
    if name == "left_to_right":
        return left_to_right
    if name == "easiest_first":
        return by_priority(-teacher_token_losses(teacher, batch))
    if name == "oracle":
        return oracle(batch.ref)
    if name == "oracle_all":
        return oracle_all(batch.ref)
    raise ValueError(f"unknown order policy {name!r} (known: {', '.join(POLICIES)})")


def _batch_passes(result: DecodeResult, schedule: list[int]) -> int:
    return result.passes


def _insertion_passes(result: DecodeResult, schedule: list[int]) -> int:
    """Insertion passes of one sentence: the last inserting pass, plus the pass in
    which every slot ends."""
    return max(schedule) + 2 if schedule else 1


def check_teacher(module: Seq2SeqModule, teacher: Seq2SeqModule) -> None:
    if not teacher.incremental:
        raise ValueError(f"the teacher must decode token by token (autoregressive), not a {teacher.family!r} checkpoint")
    if teacher.tokenizer.model_bytes != module.tokenizer.model_bytes:
        raise ValueError("the teacher's SentencePiece model differs from the checkpoint's")


@dataclass
class DiagnosticRun:
    """What a family's diagnostics (``Seq2SeqModule.diagnostics``) work on: the test
    set in batches and the settings of ``nargen diagnose``."""

    batches: list[Batch]
    references: list[str]
    teacher: Seq2SeqModule | None
    iterations: tuple[int, ...]
    length_beams: tuple[int, ...]
    seed: int
    eos_penalties: tuple[float, ...]
    log: Callable[[str], None]


def diagnose(
    module: Seq2SeqModule,
    sources: list[str],
    references: list[str],
    *,
    teacher: Seq2SeqModule | None = None,
    iterations: tuple[int, ...] = (1, 2, 4, 10),
    length_beams: tuple[int, ...] = (1, 5),
    seed: int = 1,
    eos_penalties: tuple[float, ...] = (),
    max_tokens: int = DecodeConfig.max_tokens,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every diagnostic the module's family runs (``Seq2SeqModule.diagnostics``, built
    from the sections below; see the module doc); easiest-first needs ``teacher``;
    insertion checkpoints are also decoded at each of ``eos_penalties``. Returns a
    JSON-ready report."""
    if type(module).diagnostics is Seq2SeqModule.diagnostics:
        offered = sorted(name for name, family in FAMILIES.items()
                         if family.diagnostics is not Seq2SeqModule.diagnostics)
        raise ValueError(f"nargen diagnose has no diagnostics for a {module.family!r} checkpoint "
                         f"(families that have: {', '.join(offered)})")
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    if teacher is not None:
        check_teacher(module, teacher)
    module.eval()
    run = DiagnosticRun(make_batches(module, sources, references, max_tokens), references, teacher,
                        iterations, length_beams, seed, eos_penalties, log)
    return {"family": module.family, "sentences": len(sources), **module.diagnostics(run)}


def length_rows(module: Seq2SeqModule, run: DiagnosticRun, steps: tuple[int, ...],
                learned_at_last: bool) -> dict[str, Any]:
    """Oracle length: mask-predict at each of ``steps`` iterations with the predicted
    length (each length beam) and the reference's; with ``learned_at_last``, also the
    order the model chose in the first variant at the most iterations."""
    settings = module.mask_predict_settings()
    report: dict[str, Any] = {"iterations": list(steps)}
    rows = []
    for t in steps:
        variants = [(f"predicted, beam {k}", lambda b, k=k: {"length_beam": k}) for k in run.length_beams]
        variants.append(("reference", lambda b: {"lengths": b.ref_lengths}))
        for label, extra in variants:
            decoded = run_with(module, run.batches, settings, t, extra)
            rows.append({"length": label, "iterations": t, **scored(module, decoded, run.references)})
            run.log(f"length {label}, T={t}: BLEU {rows[-1]['bleu']}")
            if learned_at_last and label == variants[0][0] and t == max(steps):
                report["learned_order"] = [{"decoding": f"mask-predict T={t}", **learned_order(decoded)}]
    report["length"] = rows
    return report


def order_rows(module: Seq2SeqModule, run: DiagnosticRun) -> list[dict[str, Any]]:
    """Order policies: mask-predict with the reference length, each ``POLICIES`` choosing
    which tokens are kept after each iteration (easiest-first needs the teacher)."""
    settings = module.mask_predict_settings()
    rows = []
    for name in POLICIES:
        if name == "easiest_first" and run.teacher is None:
            run.log("easiest_first skipped: no --teacher-ckpt")
            continue
        for t in run.iterations:
            extra = lambda b, name=name: {  # noqa: E731
                "lengths": b.ref_lengths, "remask": _policy(name, b, run.teacher, run.seed)
            }
            decoded = run_with(module, run.batches, settings, t, extra)
            rows.append({"policy": name, "iterations": t, **scored(module, decoded, run.references)})
            run.log(f"order {name}, T={t}: BLEU {rows[-1]['bleu']}")
    return rows


def sampler_rows(module: Seq2SeqModule, run: DiagnosticRun, samplers: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each of ``samplers`` (the ``sampler`` decoder option: mask-predict, the unmasking
    samplers of ``nargen.decoding.unmasking``) at each of ``run.iterations`` steps, with
    the predicted length (threshold: its mean passes are what it used, at most the
    steps; a model decoding in blocks runs at least one pass a block)."""
    rows = []
    for sampler in samplers:
        for t in run.iterations:
            decoded = decode_all(module, run.batches, lambda b, s=sampler, t=t: module.generate(
                b.src, sampler=s, iterations=t, length_beam=1, seed=run.seed), _batch_passes)
            rows.append({"sampler": sampler, "iterations": t, **scored(module, decoded, run.references)})
            run.log(f"sampler {sampler}, {t} steps: BLEU {rows[-1]['bleu']}, {rows[-1]['mean_passes']} passes")
    return rows


def likelihood_rows(module: Any, run: DiagnosticRun) -> list[dict[str, Any]]:
    """The model's bound on the negative log-likelihood per target token (a family
    with ``nll_bound``) beside the teacher's exact one, on the same sentences."""
    total = tokens = 0.0
    generator = torch.Generator(device=module.device).manual_seed(run.seed)
    for batch in run.batches:
        nats, n = module.nll_bound(_teacher_forced(module, batch), generator)
        total, tokens = total + float(nats), tokens + n
    rows = [{"model": f"{module.family} (bound)", "nll_per_token": round(total / tokens, 4), "tokens": int(tokens)}]
    if run.teacher is not None:
        total = tokens = 0.0
        for batch in run.batches:
            nats, n = teacher_nll(run.teacher, _teacher_forced(run.teacher, batch))
            total, tokens = total + nats, tokens + n
        rows.append({"model": f"{run.teacher.family} teacher (exact)", "nll_per_token": round(total / tokens, 4),
                     "tokens": int(tokens)})
    return rows


def _teacher_forced(module: Seq2SeqModule, batch: Batch) -> dict[str, torch.Tensor]:
    """A diagnostic batch as training batches are: source, BOS + reference, reference + EOS."""
    ref = batch.ref.to(module.device)
    bos = torch.full_like(ref[:, :1], module.ids.bos)
    pad = torch.full_like(ref[:, :1], module.ids.pad)
    tgt_out = torch.cat([ref, pad], 1).scatter(1, batch.ref_lengths.to(module.device)[:, None], module.ids.eos)
    return {"src": batch.src.to(module.device), "tgt_in": torch.cat([bos, ref], 1), "tgt_out": tgt_out}


@torch.no_grad()
def teacher_nll(teacher: Seq2SeqModule, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """An autoregressive model's exact negative log-likelihood of the batch's targets
    (EOS included), summed, and the number of tokens."""
    logits = teacher.model(batch["src"], batch["tgt_in"]).float()
    real = batch["tgt_out"] != teacher.ids.pad
    nll = torch.nn.functional.cross_entropy(logits[real], batch["tgt_out"][real], reduction="sum")
    return float(nll), int(real.sum())


def insertion_rows(module: Seq2SeqModule, run: DiagnosticRun) -> dict[str, Any]:
    """Parallel and sequential insertion: BLEU, passes against a perfect balanced tree's,
    the learned order, passes by length; BLEU at each end-of-slot penalty asked for."""
    rows, orders, report = [], [], {}
    own_penalty = module.decode_options()["eos_penalty"]
    for parallel in (True, False):
        mode = "parallel" if parallel else "sequential"
        decoded = decode_all(
            module, run.batches, lambda b: module.generate(b.src, parallel=parallel), _insertion_passes
        )
        tree = statistics.fmean(math.ceil(math.log2(len(t) + 1)) + 1 for t in decoded.tokens)
        rows.append({"decoding": mode, "eos_penalty": own_penalty, **scored(module, decoded, run.references),
                     "mean_tree_passes": round(tree, 2)})
        orders.append({"decoding": f"insertion, {mode}", **learned_order(decoded)})
        run.log(f"insertion {mode}: BLEU {rows[-1]['bleu']}, {rows[-1]['mean_passes']} passes")
        if parallel:
            report["passes_by_length"] = passes_by_length(decoded)
    report["slot_decoding"] = rows
    report["learned_order"] = orders
    if run.eos_penalties:
        report["reference_mean_length"] = round(statistics.fmean(
            n for b in run.batches for n in b.ref_lengths.tolist()), 2)
        report["eos_penalty"] = eos_penalty_rows(module, run.batches, run.references, run.eos_penalties, run.log)
    return report


def decoder_rows(module: Seq2SeqModule, run: DiagnosticRun, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A single-pass family's decoders side by side: each of ``variants`` (decoder
    options) over the whole test set."""
    rows = []
    for options in variants:
        decoded = decode_all(module, run.batches, lambda b: module.generate(b.src, **options), _batch_passes)
        name = " ".join(f"{k}={v}" for k, v in options.items())
        rows.append({"decoding": name, **scored(module, decoded, run.references)})
        run.log(f"{module.family} {name}: BLEU {rows[-1]['bleu']}")
    return rows


def eos_penalty_rows(
    module: Seq2SeqModule, batches: list[Batch], references: list[str], penalties: tuple[float, ...],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Parallel and sequential insertion decoding at each end-of-slot penalty: BLEU,
    chrF, mean output length and passes."""
    rows = []
    for parallel in (True, False):
        mode = "parallel" if parallel else "sequential"
        for penalty in penalties:
            decoded = decode_all(
                module, batches, lambda b: module.generate(b.src, parallel=parallel, eos_penalty=penalty),
                _insertion_passes,
            )
            rows.append({"decoding": mode, "eos_penalty": penalty, **scored(module, decoded, references)})
            log(f"insertion {mode}, end-of-slot penalty {penalty}: BLEU {rows[-1]['bleu']}, "
                f"mean length {rows[-1]['mean_length']}")
    return rows




def bleu_by_length(
    module: Seq2SeqModule, decoded: Decoded, references: list[str], ref_lengths: list[int]
) -> list[dict[str, Any]]:
    """Corpus BLEU within each reference-length bucket (``nargen.bench.reports.LENGTH_BUCKETS``,
    in target tokens), for buckets holding at least 10 sentences."""
    texts = module.tokenizer.decode(decoded.tokens)
    return [{"lengths": name, "sentences": len(rows),
             "bleu": score([texts[i] for i in rows], [references[i] for i in rows])["bleu"]}
            for name, rows in by_length(ref_lengths) if len(rows) >= 10]


def run_with(
    module: Seq2SeqModule, batches: list[Batch], settings: dict[str, Any], iterations: int,
    extra: Callable[[Batch], dict[str, Any]],
) -> Decoded:
    """Mask-predict over every batch with the checkpoint's settings and per-batch
    extra arguments (a length beam, given lengths, a re-masking policy)."""
    return decode_all(
        module, batches,
        lambda b: mask_predict(module, b.src, iterations=iterations, **settings, **extra(b)),
        _batch_passes,
    )


def passes_by_length(decoded: Decoded) -> list[dict[str, float]]:
    """Mean passes per output length (lengths with at least 5 sentences)."""
    by: dict[int, list[int]] = {}
    for tokens, passes in zip(decoded.tokens, decoded.passes):
        by.setdefault(len(tokens), []).append(passes)
    return [
        {"length": n, "mean_passes": round(statistics.fmean(p), 2), "sentences": len(p)}
        for n, p in sorted(by.items()) if len(p) >= 5
    ]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _pivot(rows: list[dict[str, Any]], key: str, steps: list[int]) -> list[list[Any]]:
    """One table row per ``key`` value, BLEU at each number of iterations."""
    names = list(dict.fromkeys(r[key] for r in rows))
    bleu = {(r[key], r["iterations"]): r["bleu"] for r in rows}
    return [[name, *(bleu.get((name, t), "") for t in steps)] for name in names]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (BLEU is sacreBLEU's, signature below each)."""
    out = [f"# Diagnostics: {report['family']} checkpoint, {report['sentences']} sentences", ""]
    if "source" in report:
        out += [f"Checkpoint `{report['checkpoint']}`, source `{report['source']}`, reference `{report['reference']}`.", ""]
    steps = report.get("iterations", [])
    header = ["", *(f"T={t}" for t in steps)]
    signature = None
    if "length" in report:
        out += ["## Oracle length (BLEU)", ""]
        out += _table(["target length", *header[1:]], _pivot(report["length"], "length", steps))
        signature = report["length"][0]["bleu_signature"]
        out.append("")
    if "order" in report:
        out += ["## Order of commitment in mask-predict (BLEU, reference length given)", "",
                "`confidence` is mask-predict's own order, so its row equals the reference-length row above.", ""]
        out += _table(["policy", *header[1:]], _pivot(report["order"], "policy", steps))
        out += ["", "Kept tokens are always the model's own predictions; the policy only chooses "
                "which are kept after each iteration.", ""]
    if "samplers" in report:
        out += ["## Unmasking samplers (BLEU, predicted length)", "",
                "Committed tokens are never revisited, except by mask-predict, which re-masks anywhere.", ""]
        out += _table(["sampler", *header[1:]], _pivot(report["samplers"], "sampler", steps))
        passes = {(r["sampler"], r["iterations"]): r["mean_passes"] for r in report["samplers"]}
        out += ["", "Mean passes:", ""]
        out += _table(["sampler", *header[1:]], [[name, *(passes.get((name, t), "") for t in steps)]
                                                 for name in dict.fromkeys(r["sampler"] for r in report["samplers"])])
        signature = report["samplers"][0]["bleu_signature"]
        out.append("")
    if "likelihood" in report:
        out += ["## Negative log-likelihood per target token (nats; EOS counted as a token)", ""]
        out += _table(["model", "NLL per token", "tokens"],
                      [[r["model"], r["nll_per_token"], r["tokens"]] for r in report["likelihood"]])
        out.append("")
    if "slot_decoding" in report:
        out += ["## Insertion decoding", ""]
        out += _table(
            ["decoding", "end-of-slot penalty", "BLEU", "chrF", "mean passes", "ceil(log2(n+1))+1", "mean length"],
            [[r["decoding"], r.get("eos_penalty", 0.0), r["bleu"], r["chrf"], r["mean_passes"],
              r["mean_tree_passes"], r["mean_length"]] for r in report["slot_decoding"]],
        )
        signature = report["slot_decoding"][0]["bleu_signature"]
        out.append("")
    if "eos_penalty" in report:
        out += ["## End-of-slot penalty (a slot ends only when ending beats its best insertion by this much)", "",
                f"Mean reference length: {report['reference_mean_length']} tokens.", ""]
        out += _table(["decoding", "penalty", "BLEU", "chrF", "mean length", "mean passes"],
                      [[r["decoding"], r["eos_penalty"], r["bleu"], r["chrf"], r["mean_length"], r["mean_passes"]]
                       for r in report["eos_penalty"]])
        out.append("")
    if "latent_sources" in report:
        out += ["## Latents: the prior against the reference's own latents", ""]
        out += _table(["latents", "BLEU", "chrF", "mean latents", "mean passes", "codebook perplexity",
                       "live codes", "mean length"],
                      [[r["latents"], r["bleu"], r["chrf"], r["mean_latents"], r["mean_passes"],
                        r["codebook_perplexity"], r["live_codes"], r["mean_length"]] for r in report["latent_sources"]])
        buckets = [b["lengths"] for b in report["latent_sources"][0]["bleu_by_length"]]
        out += ["", "BLEU by reference length (target tokens; sentences per bucket in brackets):", ""]
        counts = {b["lengths"]: b["sentences"] for b in report["latent_sources"][0]["bleu_by_length"]}
        out += _table(["latents", *(f"{b} ({counts[b]})" for b in buckets)],
                      [[r["latents"], *(b["bleu"] for b in r["bleu_by_length"])] for r in report["latent_sources"]])
        signature = report["latent_sources"][0]["bleu_signature"]
        out += ["", "Passes are one sentence's alone: the prior's latents plus its end step, then one "
                "decoder pass (rows that take the count or the latents from the reference: the "
                "decoder pass only). `oracle count`: the prior's own greedy choices, held to as many "
                "latents as the reference has; between it and `prior greedy` lies what the latent "
                "length costs, between it and `oracle latents` what the content of the latents costs.", ""]
    if "decoders" in report:
        out += ["## Decoders (one decoder pass each)", ""]
        out += _table(["decoding", "BLEU", "chrF", "mean length"],
                      [[r["decoding"], r["bleu"], r["chrf"], r["mean_length"]] for r in report["decoders"]])
        signature = report["decoders"][0]["bleu_signature"]
        out.append("")
    if "learned_order" in report:
        out += ["## The order the model chose (Kendall tau-b, mean over sentences)", ""]
        out += _table(
            ["decoding", "vs left-to-right", "vs balanced tree", "sentences"],
            [[r["decoding"], r["tau_left_to_right"], r["tau_balanced_tree"], r["sentences"]]
             for r in report["learned_order"]],
        )
        out.append("")
    if signature:
        out += [f"BLEU signature: `{signature}`", ""]
    return "\n".join(out)


def charts(report: dict[str, Any]) -> list[Chart]:
    """BLEU against iterations (one line per length setting and per order policy);
    for insertion, passes against output length beside the balanced tree's."""
    found = []
    steps = report.get("iterations", [])
    if "length" in report or "order" in report or "samplers" in report:
        chart = Chart(
            title=f"{report['family']}: BLEU against refinement steps",
            xlabel="steps T (sequential decoder passes; threshold: at most)", ylabel="BLEU", xticks=steps,
            log_x=len(steps) > 1,
        )
        for key, rows, prefix in (("length", report.get("length", []), "length: "),
                                  ("policy", report.get("order", []), "order: "),
                                  ("sampler", report.get("samplers", []), "sampler: ")):
            for name in dict.fromkeys(r[key] for r in rows):
                if key == "length" and name == "reference" and "order" in report:
                    continue  # the same decoding as the order policy "confidence"
                mine = [r for r in rows if r[key] == name]
                chart.lines.append(Line(
                    prefix + name, [r["iterations"] for r in mine], [r["bleu"] for r in mine],
                    dashed=key == "length",
                ))
        found.append(chart)
    if "passes_by_length" in report:
        points = report["passes_by_length"]
        lengths = [p["length"] for p in points]
        found.append(Chart(
            title="insertion, parallel decoding: passes against output length",
            xlabel="output length (tokens)", ylabel="decoder passes",
            lines=[
                Line("model (mean)", lengths, [p["mean_passes"] for p in points]),
                Line("balanced tree: ceil(log2(n+1))+1", lengths,
                     [math.ceil(math.log2(n + 1)) + 1 for n in lengths], dashed=True),
                Line("one insertion a pass: n+1", lengths, [n + 1 for n in lengths], dashed=True),
            ],
        ))
    if "eos_penalty" in report:
        chart = Chart(title="insertion: BLEU against the end-of-slot penalty", xlabel="end-of-slot penalty",
                      ylabel="BLEU")
        for mode in dict.fromkeys(r["decoding"] for r in report["eos_penalty"]):
            mine = [r for r in report["eos_penalty"] if r["decoding"] == mode]
            chart.lines.append(Line(mode, [r["eos_penalty"] for r in mine], [r["bleu"] for r in mine]))
        found.append(chart)
    if "latent_sources" in report:
        found += latent_charts(report["latent_sources"])
    return found


def latent_charts(rows: list[dict[str, Any]]) -> list[Chart]:
    """BLEU by reference length for each source of latents, and the prior's passes
    against output length beside an autoregressive decoder's n + 1."""
    buckets = [b["lengths"] for b in rows[0]["bleu_by_length"]]
    bleu = Chart(title="latent: BLEU by reference length", xlabel="reference length (target tokens)",
                 ylabel="BLEU", xticks=list(range(len(buckets))), xticklabels=buckets)
    for r in rows:
        bleu.lines.append(Line(r["latents"], list(range(len(r["bleu_by_length"]))),
                               [b["bleu"] for b in r["bleu_by_length"]], dashed="oracle" in r["latents"]))
    points = next(r["passes_by_length"] for r in rows if r["latents"] == "prior greedy")
    lengths = [p["length"] for p in points]
    passes = Chart(
        title="latent, prior greedy: passes against output length",
        xlabel="output length (tokens)", ylabel="sequential passes",
        lines=[Line("prior latents + end + decoder (mean)", lengths, [p["mean_passes"] for p in points]),
               Line("autoregressive: n + 1", lengths, [n + 1 for n in lengths], dashed=True)],
    )
    return [bleu, passes]


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[list[Path], str | None]:
    """``diagnose.json``, ``diagnose.md`` and the plots (PNG and SVG) in ``out_dir``.
    Returns the files written and, when matplotlib is missing, why there are no plots."""
    texts = {"diagnose.json": json.dumps(report, indent=2) + "\n", "diagnose.md": markdown(report)}
    return reports.write_report(out_dir, texts, lambda: (
        ("diagnose" if i == 0 else f"diagnose_{i + 1}", chart) for i, chart in enumerate(charts(report))))
