"""The commands beside fitting and decoding: diagnose, average, download and the bench's
systems and kv-cache, each with its settings as a dataclass whose fields are its flags."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nargen.config import ConfigError, POSITIONAL, add_dataclass_flags, command_parser, from_namespace, parse
from nargen.cli.decoding import (
    Batching, add_decoder_option_flags, command_line_options, decoder_families, parallel_lines,
)
from nargen.data.corpora import NAMED_CORPORA, default_root, download
from nargen.data.corpus import read_lines
from nargen.models import load_module


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def settings_of(prog: str, description: str, argv: list[str], *classes: type) -> list[Any]:
    """Parse ``argv`` with a flag for each field of ``classes`` (``Batching`` in its own
    group); one instance of each."""
    parser = command_parser(prog, description)
    for cls in classes:
        add_dataclass_flags(parser, cls, "batching" if cls is Batching else None)
    namespace = parse(parser, argv)
    return [from_namespace(cls, namespace) for cls in classes]


def report_written(files: list[Path], missing_plots: str | None) -> None:
    """Name the files a report wrote, and why it has no plots when it has none."""
    if missing_plots:
        print(f"no plots: {missing_plots}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files))


@dataclass
class DiagnoseSettings:
    """The checkpoint, the test set and the sweeps of its family's diagnostics."""

    ckpt: str
    """Checkpoint of a family that has diagnostics."""
    src: str
    """Source side of the test set."""
    ref: str
    """Reference translations, line for line."""
    out: str
    """Folder for diagnose.json, diagnose.md and the plots."""
    teacher_ckpt: str | None = None
    """Autoregressive checkpoint (same tokenizer) for the easiest-first order."""
    iteration_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 10])
    """Refinement passes tried, where the family refines its output."""
    length_beams: list[int] = field(default_factory=lambda: [1, 5])
    """Predicted-length beams set against the reference length, where the family predicts one."""
    order_seed: int = 1
    """Seed of the random order."""
    decode_options: dict[str, Any] | None = None
    """Decoder options replacing the checkpoint's own (decode.options) as a YAML mapping;
    an option's own flag overrides it."""
    eos_penalties: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0])
    """End-of-slot penalties also decoded at, where the family inserts (none: skip)."""
    limit: int = 0
    """Only the first N sentences (0: all)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""


def cmd_diagnose(argv: list[str]) -> int:
    """``nargen diagnose``: oracle length, oracle order and the learned order of a parallel checkpoint."""
    from nargen.diagnose import diagnose, markdown, write_report

    parser = command_parser("nargen diagnose", cmd_diagnose.__doc__)
    add_dataclass_flags(parser, DiagnoseSettings)
    add_dataclass_flags(parser, Batching, "batching")
    names = add_decoder_option_flags(parser, decoder_families(argv))
    namespace = parse(parser, argv)
    d, batching = from_namespace(DiagnoseSettings, namespace), from_namespace(Batching, namespace)
    if d.threads:
        torch.set_num_threads(d.threads)
    module = load_module(d.ckpt, map_location=_device())
    options = command_line_options(d.decode_options, namespace, names, module)
    module.decode_config.options = {**module.decode_config.options, **options}
    teacher = load_module(d.teacher_ckpt, map_location=_device()) if d.teacher_ckpt else None
    sources, refs = parallel_lines(d.src, d.ref)
    if d.limit:
        sources, refs = sources[: d.limit], refs[: d.limit]
    try:
        report = diagnose(
            module, sources, refs, teacher=teacher, iterations=tuple(d.iteration_counts),
            length_beams=tuple(d.length_beams), seed=d.order_seed,
            max_tokens=batching.max_tokens or module.decode_config.max_tokens,
            eos_penalties=tuple(d.eos_penalties), log=lambda message: print(message, file=sys.stderr),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    report.update({"checkpoint": d.ckpt, "source": d.src, "reference": d.ref, "teacher": d.teacher_ckpt})
    print(markdown(report))
    report_written(*write_report(report, d.out))
    return 0


@dataclass
class AverageSettings:
    """Checkpoints of one run and where their mean goes."""

    ckpts: list[str] = field(metadata=POSITIONAL)
    """Checkpoints of one run, e.g. runs/X/checkpoints/step-*.ckpt."""
    out: str
    """The averaged checkpoint to write."""


def cmd_average(argv: list[str]) -> int:
    """``nargen average``: average checkpoints' weights into one checkpoint."""
    from nargen.training.averaging import average_checkpoints

    (a,) = settings_of("nargen average", cmd_average.__doc__, argv, AverageSettings)
    out = average_checkpoints(a.ckpts, a.out)
    print(f"wrote {out}: the mean of {len(a.ckpts)} checkpoints")
    return 0


@dataclass
class DownloadSettings:
    """A named corpus and where it goes."""

    corpus: str = field(metadata=POSITIONAL)
    """The corpus's name (nargen download --help lists them)."""
    root: str | None = None
    """Target folder (default $NARGEN_DATA or data/<corpus>)."""
    pair: str | None = None
    """e.g. de-en (default: the corpus's languages)."""
    splits: list[str] | None = None
    """Splits to fetch (default: all of the corpus's)."""
    base_url: str | None = None
    """A mirror holding the same file names."""
    allow_unchecked: bool = False
    """Fetch files whose digest nargen does not know (it says which)."""


def cmd_download(argv: list[str]) -> int:
    """``nargen download``: fetch a named corpus (needs a network)."""
    description = f"{cmd_download.__doc__} Corpora: {', '.join(sorted(NAMED_CORPORA))}."
    (d,) = settings_of("nargen download", description, argv, DownloadSettings)
    if d.corpus not in NAMED_CORPORA:
        raise ConfigError(f"unknown corpus {d.corpus!r} (known: {', '.join(sorted(NAMED_CORPORA))})")
    corpus = NAMED_CORPORA[d.corpus]
    root = Path(d.root) if d.root else default_root(d.corpus)
    langs = d.pair.split("-") if d.pair else corpus.langs
    fetched = download(corpus, root, d.splits or corpus.splits, langs, base_url=d.base_url,
                       allow_unchecked=d.allow_unchecked)
    print(f"{root}: wrote {len(fetched)} files" + (f" ({', '.join(p.name for p in fetched)})" if fetched else " (all present)"))
    return 0


@dataclass
class BenchSystemsSettings:
    """A bench spec and where its report goes."""

    spec: str
    """YAML bench spec, e.g. recipes/multi30k/bench/parallel_tiny.yaml."""
    out: str
    """Folder for bench.json, bench.md and the plots (PNG, SVG)."""
    latency_sentences: int | None = None
    """Sentences timed at batch size 1 (default: the spec's, else all)."""
    threads: int = 0
    """CPU threads for torch (0: the spec's, else torch's default)."""
    dtype: str | None = None
    """Weights and activations of every system: auto, fp32, bf16 or fp16 (default: the spec's)."""
    skip_missing: bool = False
    """Leave out systems whose checkpoints are not there yet (named in the table)."""
    systems: str | None = None
    """Only the systems whose name this regular expression matches (searched anywhere in
    the name), e.g. 'from AR'; the table says which were chosen."""


def cmd_bench_systems(argv: list[str]) -> int:
    """``nargen bench systems``: every system of a spec in one process: JSON, Markdown, plot."""
    from nargen.bench.report import markdown_table, write_report
    from nargen.bench.systems import load_bench_spec, matching_systems, run_bench, split_missing

    (b,) = settings_of("nargen bench systems", cmd_bench_systems.__doc__, argv, BenchSystemsSettings)
    spec, systems = load_bench_spec(b.spec)
    if b.systems is not None:
        systems = matching_systems(systems, b.systems, f"{b.spec}: --systems")
    left_out: list[dict] = []
    if b.skip_missing:
        systems, left_out = split_missing(systems)
        for row in left_out:
            print(f"left out {row['system']}: no {', '.join(row['missing'])}", file=sys.stderr)
        if not systems:
            raise ConfigError(f"{b.spec}: no system has its checkpoints")
    if b.latency_sentences is not None:
        spec.latency_sentences = b.latency_sentences
    if b.threads:
        spec.threads = b.threads
    if b.dtype is not None:
        spec.dtype = b.dtype
    result = run_bench(spec, systems, log=lambda message: print(message, file=sys.stderr))
    result["left_out"] = left_out
    result["systems_chosen"] = b.systems
    print(markdown_table(result))
    report_written(*write_report(result, b.out))
    return 0


@dataclass
class KvCacheSettings:
    """The checkpoint and the sentences decoded."""

    ckpt: str
    """A checkpoint that decodes token by token through a KV cache."""
    src: str
    """Source sentences, one a line."""
    sentences: int = 200
    """The first N lines are decoded."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""


def cmd_bench_kv_cache(argv: list[str]) -> int:
    """``nargen bench kv-cache``: greedy decoding with vs without the KV cache."""
    from nargen.data.batching import token_budget_batches
    from nargen.decoding import greedy

    k, batching = settings_of("nargen bench kv-cache", cmd_bench_kv_cache.__doc__, argv, KvCacheSettings, Batching)
    if k.threads:
        torch.set_num_threads(k.threads)
    module = load_module(k.ckpt, map_location=_device())
    if not module.incremental:
        raise ConfigError(f"{k.ckpt}: kv-cache measures decoding token by token through the cache; "
                          f"a {module.family!r} checkpoint decodes otherwise")
    sources = read_lines(k.src)[: k.sentences]
    ids = module.source_ids(sources)
    max_tokens = batching.max_tokens or module.decode_config.max_tokens
    batches = token_budget_batches([len(x) for x in ids], max_tokens)
    srcs = [module.source_tensor([ids[i] for i in b]) for b in batches]
    settings = module.decoder_settings()
    outputs, seconds = {}, {}
    for use_cache in (True, False):
        greedy(module.model, srcs[0][:4], use_cache=use_cache, **settings)  # warm-up, same settings
        start = time.perf_counter()
        outputs[use_cache] = [
            greedy(module.model, s, use_cache=use_cache, **settings).as_lists(module.ids.pad)
            for s in srcs
        ]
        seconds[use_cache] = time.perf_counter() - start
    same = outputs[True] == outputs[False]
    n = len(sources)
    print(f"greedy decoding of {n} sentences from {k.src} ({len(batches)} batches, "
          f"max_tokens {max_tokens}, {module.device}, {torch.get_num_threads()} threads)")
    print(f"  with KV cache:    {seconds[True]:.2f} s  ({n / seconds[True]:.1f} sentences/s)")
    print(f"  without KV cache: {seconds[False]:.2f} s  ({n / seconds[False]:.1f} sentences/s)")
    print(f"  speed-up from the cache: {seconds[False] / seconds[True]:.2f}x; outputs identical: {same}")
    return 0
