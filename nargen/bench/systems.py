"""``nargen bench systems``: every system of a spec measured in one process, one table.

Follows docs/EVALUATION.md by construction: one machine, one thread setting, a warm-up
before each timing, batch-1 latency (mean, p90) and large-batch throughput, mean
sequential passes, a reranker's time inside the system that uses it, and speed-ups
against both the autoregressive greedy and beam baselines.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from nargen.config import ConfigError, load_dataclass, read_yaml
from nargen.data.corpora import default_root, read_split
from nargen.evaluation import evaluate
from nargen.models import Seq2SeqModule, load_drafter, load_module, load_reranker
from nargen.models.base import DecodeConfig
from nargen.decoding.precision import decoding_dtype


@dataclass
class SystemSpec:
    """One row of the table: a checkpoint and its decoder settings."""

    name: str
    ckpt: str
    options: dict[str, Any] = field(default_factory=dict)
    """Decoder options of the checkpoint's family (beam, iterations, length_beam, ...)."""
    rerank_ckpt: str | None = None
    """Autoregressive checkpoint that rescores a parallel model's length beam."""
    draft_ckpt: str | None = None
    """Drafter (any family) for an autoregressive model's speculative decoding."""
    training_data: str = ""
    """What the model was trained on, as the table should say it (raw, distilled, ...)."""


@dataclass
class BenchSpec:
    """Test data, timing settings and the systems to compare."""

    corpus: str = "multi30k"
    root: str | None = None
    """Folder with the split's files; default ``$NARGEN_DATA`` or ``data/<corpus>``."""
    src_lang: str = "de"
    tgt_lang: str = "en"
    split: str = "test_2016_flickr"
    threads: int = 0
    """torch threads for every system (0 = torch's default)."""
    dtype: str = "auto"
    """Weights and activations of every system: auto (bf16 on a GPU, fp32 on a CPU),
    fp32, bf16 or fp16 (GPU)."""
    latency_sentences: int | None = None
    """Sentences timed at batch size 1 (default: the whole split)."""
    max_tokens: int = DecodeConfig.max_tokens
    """Source-token budget of a batch in the throughput run (one for every system)."""
    greedy_baseline: str | None = None
    """Name of the AR greedy system (default: the first autoregressive one decoding with
    beam 1, without a drafter)."""
    beam_baseline: str | None = None
    """Name of the AR beam system (default: the first autoregressive one decoding with
    beam > 1)."""
    systems: list[dict[str, Any]] = field(default_factory=list)


def load_bench_spec(path: str | Path) -> tuple[BenchSpec, list[SystemSpec]]:
    """Read a bench spec (YAML), naming the file and key of anything wrong."""
    values = read_yaml(path, "bench spec")
    spec = load_dataclass(BenchSpec, values, str(path))
    if not spec.systems:
        raise ConfigError(f"{path}: no systems listed")
    systems = [load_dataclass(SystemSpec, s, f"{path}: systems[{i}]") for i, s in enumerate(spec.systems)]
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: system names repeat: {', '.join(sorted(set(n for n in names if names.count(n) > 1)))}")
    for key in ("greedy_baseline", "beam_baseline"):
        if getattr(spec, key) not in (None, *names):
            raise ConfigError(f"{path}: {key} {getattr(spec, key)!r} is not a system name")
    return spec, systems


def missing_checkpoints(system: SystemSpec) -> list[str]:
    """The system's checkpoints (its own, reranker, drafter) that are not files."""
    paths = [system.ckpt, system.rerank_ckpt, system.draft_ckpt]
    return [p for p in paths if p and not Path(p).is_file()]


def matching_systems(systems: list[SystemSpec], pattern: str, where: str) -> list[SystemSpec]:
    """The systems whose name the regular expression ``pattern`` matches (anywhere in
    it); a clear error for a pattern that is not one or matches none."""
    try:
        chosen = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({err})") from None
    kept = [s for s in systems if chosen.search(s.name)]
    if not kept:
        raise ConfigError(f"{where}: {pattern!r} matches no system name")
    return kept


def split_missing(systems: list[SystemSpec]) -> tuple[list[SystemSpec], list[dict[str, Any]]]:
    """The systems whose checkpoints all exist, and a record of each left out
    (its name and the missing files)."""
    kept, left_out = [], []
    for system in systems:
        missing = missing_checkpoints(system)
        if missing:
            left_out.append({"system": system.name, "missing": missing})
        else:
            kept.append(system)
    return kept, left_out


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``options`` a JSON record can hold (no reranker or drafter object)."""
    return {k: v for k, v in options.items() if v is None or isinstance(v, (bool, int, float, str))}


def _baseline(records: list[dict[str, Any]], name: str | None, beam: bool) -> dict[str, Any] | None:
    """The record named ``name``, else the first of a speed-baseline family
    (``Seq2SeqModule.speed_baseline``: autoregressive) without a drafter or
    sampling whose beam (as decoded: the spec's options over the checkpoint's own) is 1 for the
    greedy baseline, more for the beam baseline."""
    for record in records:
        if name is not None:
            if record["system"] == name:
                return record
            continue
        o = record["decode_options"]
        argmax = not record["draft_ckpt"] and not o.get("sampling")
        if record.get("speed_baseline") and argmax and (o.get("beam", 1) > 1) == beam:
            return record
    return None


def add_speedups(records: list[dict[str, Any]], spec: BenchSpec) -> None:
    """Speed-up of every system over AR greedy and AR beam, at batch 1 and batched."""
    for label, base in (("greedy", _baseline(records, spec.greedy_baseline, False)),
                        ("beam", _baseline(records, spec.beam_baseline, True))):
        if base is None:
            continue
        for record in records:
            if "batch1_ms_mean" in base and "batch1_ms_mean" in record:  # none with latency_sentences 0
                record[f"speedup_batch1_vs_{label}"] = round(base["batch1_ms_mean"] / record["batch1_ms_mean"], 2)
            record[f"speedup_batched_vs_{label}"] = round(record["sentences_per_s"] / base["sentences_per_s"], 2)
            record[f"{label}_baseline"] = base["system"]


def count_greedy_differences(records: list[dict[str, Any]], outputs: list[list[str]], spec: BenchSpec) -> None:
    """For every speculative system (one that counts drafted tokens), the number of
    sentences whose batched translation differs from the greedy baseline's
    (``differ_from_greedy``): speculative decoding promises the greedy output of the
    model it verifies with, so this is 0 when that model is the baseline's and nothing
    rounds differently."""
    base = _baseline(records, spec.greedy_baseline, False)
    if base is None:
        return
    greedy_texts = outputs[records.index(base)]
    for record, texts in zip(records, outputs):
        if "draft_acceptance" in record:
            record["differ_from_greedy"] = sum(a != b for a, b in zip(texts, greedy_texts))


def cpu_name() -> str:
    """The processor's model name where the system says it, else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(
    spec: BenchSpec, systems: list[SystemSpec], log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Load every system (checking its options first), then score and time each in turn."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dtype = decoding_dtype(spec.dtype, device)
    except ValueError as err:
        raise ConfigError(f"bench spec: {err}") from None
    root = Path(spec.root) if spec.root else default_root(spec.corpus)
    test = read_split(root, spec.split, spec.src_lang, spec.tgt_lang)
    modules: dict[str, Seq2SeqModule] = {}
    prepared = []
    for i, system in enumerate(systems):
        missing = missing_checkpoints(system)
        if missing:
            raise ConfigError(f"systems[{i}] ({system.name}): no checkpoint {', '.join(missing)} "
                              "(train it first, or leave such systems out with --skip-missing)")
        if system.ckpt not in modules:
            modules[system.ckpt] = load_module(system.ckpt, map_location=device).to(dtype=dtype)
        module = modules[system.ckpt]
        options = dict(system.options)
        extra = (["rerank"] if system.rerank_ckpt else []) + (["draft"] if system.draft_ckpt else [])
        unknown = [name for name in list(options) + extra if name not in module.decode_defaults]
        if unknown:
            raise ConfigError(f"systems[{i}] ({system.name}): {', '.join(unknown)} does not "
                              f"apply to {system.ckpt}, a {module.family!r} checkpoint")
        try:
            module.check_options(options, f"systems[{i}] ({system.name}).options")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if system.rerank_ckpt:
            options["rerank"] = load_reranker(system.rerank_ckpt, module, system.ckpt)
        if system.draft_ckpt:
            options["draft"] = load_drafter(system.draft_ckpt, module, system.ckpt)
        prepared.append((system, module, options))

    records, outputs = [], []
    for system, module, options in prepared:
        log(f"{system.name}: {len(test.source)} sentences batched, "
            f"{spec.latency_sentences or len(test.source)} at batch 1")
        record, texts = evaluate(
            module, test.source, test.target, latency_sentences=spec.latency_sentences,
            max_tokens=spec.max_tokens, **options,
        )
        record.update({
            "system": system.name,
            "training_data": system.training_data,
            "checkpoint": system.ckpt,
            "options": dict(system.options),
            "decode_options": _plain(module.decode_options(system.options)),
            "rerank_ckpt": system.rerank_ckpt,
            "draft_ckpt": system.draft_ckpt,
            "data_signature": module.data_signature,
            "parameters": sum(p.numel() for p in module.parameters()),
            "speed_baseline": type(module).speed_baseline,
        })
        records.append(record)
        outputs.append(texts)
        log(f"  BLEU {record['bleu']:.2f}, {record.get('batch1_ms_mean', '-')} ms at batch 1, "
            f"{record['sentences_per_s']} sentences/s")
    add_speedups(records, spec)
    count_greedy_differences(records, outputs, spec)
    return {
        "split": f"{spec.corpus} {spec.split} {spec.src_lang}-{spec.tgt_lang}",
        "sentences": len(test.source),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({cpu_name()})",
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "spec": dataclasses.asdict(spec),
        "records": records,
    }
