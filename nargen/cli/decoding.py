"""The decoding commands, translate, evaluate and distill: a checkpoint, the batching
budget, and the decoder options of every family as flags (``--beam``, ``--iterations``
...; a flag the checkpoint's family does not take is refused, naming it)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser, Namespace

from nargen.config import ConfigError, add_dataclass_flags, add_flag, command_parser, from_namespace, parse
from nargen.models import load_drafter, load_reranker
from nargen.data import CorpusError
from nargen.data.corpora import default_root
from nargen.data.corpus import read_lines
from nargen.decoding.options import option_fields
from nargen.decoding.precision import decoding_dtype
from nargen.models import FAMILIES, CheckpointError, Seq2SeqModule, checkpoint_family, load_module


@dataclass
class Batching:
    """How many sentences are decoded together."""

    max_tokens: int = 0
    """Source tokens per decoding batch (0: the checkpoint's decode.max_tokens)."""


@dataclass
class CheckpointDecoding:
    """A checkpoint and how it decodes."""

    ckpt: str
    """Checkpoint (.ckpt) written by nargen fit."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weights and activations: auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16 or fp16 (GPU)."""
    decode_options: dict[str, Any] | None = None
    """Decoder options as a YAML mapping with the names recipes use (decode.options),
    e.g. '{iterations: 4, length_beam: 3}'; an option's own flag overrides it."""
    rerank_ckpt: str | None = None
    """An autoregressive checkpoint that rescores the candidates, where the family takes
    a reranker (rerank)."""
    draft_ckpt: str | None = None
    """A checkpoint of any family that drafts for speculative decoding, where the family
    takes a drafter (draft); the same output in fewer passes."""
    device: str | None = None
    """cpu, cuda, cuda:1 ... (default: a GPU if any)."""


def decoder_families(argv: list[str]) -> list[type[Seq2SeqModule]]:
    """The registered families, and that of the checkpoint ``--ckpt`` names in ``argv``
    (imported if it is defined outside the package): whose options get flags."""
    if "--ckpt" in argv[:-1]:
        try:
            checkpoint_family(argv[argv.index("--ckpt") + 1])
        except CheckpointError:
            pass  # named when the checkpoint is loaded
    return [FAMILIES[name] for name in sorted(FAMILIES)]


def add_decoder_option_flags(parser: ArgumentParser, families: list[type[Seq2SeqModule]]) -> list[str]:
    """A flag for each decoder option of ``families``, default unset (the checkpoint's
    own), its help naming the families that take it; returns the option names."""
    hints: dict[str, Any] = {}
    docs: dict[str, dict[str, list[str]]] = {}  # option -> its doc -> families
    defaults: dict[str, dict[str, list[str]]] = {}  # option -> its default -> families
    for family in families:
        for f in option_fields(family.decoding_options):
            if not f.call_only:
                hints.setdefault(f.name, f.type)
                docs.setdefault(f.name, {}).setdefault(f.doc, []).append(family.family)
                defaults.setdefault(f.name, {}).setdefault(repr(f.default), []).append(family.family)
    group = parser.add_argument_group(
        "decoder options", "each family's own, checked against the checkpoint's family "
        "(the same names as decode.options in a recipe and the Python API's keywords); "
        "unset: the checkpoint's decode.options, else the family's default (shown)")
    for name, hint in hints.items():
        by_doc = docs[name]
        doc = next(iter(by_doc)) if len(by_doc) == 1 else " ".join(
            f"{', '.join(names)}: {doc}" for doc, names in by_doc.items())
        shown = "; ".join(f"{', '.join(names)}: {default}" for default, names in defaults[name].items())
        add_flag(group, name, hint | None, None, f"{doc} [{shown}]")
    return list(hints)


def decoding_command(prog: str, description: str, settings: type, argv: list[str]) -> tuple[
        CheckpointDecoding, Any, Batching, Seq2SeqModule, dict[str, Any]]:
    """A decoding command's flags parsed (``CheckpointDecoding``, its own ``settings``
    dataclass, ``Batching`` and every decoder option), the checkpoint loaded and its
    decoder options checked."""
    parser = command_parser(prog, description)
    add_dataclass_flags(parser, CheckpointDecoding)
    add_dataclass_flags(parser, settings)
    add_dataclass_flags(parser, Batching, "batching")
    names = add_decoder_option_flags(parser, decoder_families(argv))
    namespace = parse(parser, argv)
    run = from_namespace(CheckpointDecoding, namespace)
    module = load_for_decoding(run)
    return (run, from_namespace(settings, namespace), from_namespace(Batching, namespace), module,
            decoder_options(run, namespace, names, module))


def load_for_decoding(run: CheckpointDecoding) -> Seq2SeqModule:
    """The checkpoint on its device (default: a GPU if any) in its dtype."""
    device = run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = load_module(run.ckpt, map_location=device)
    try:
        dtype = decoding_dtype(run.dtype, module.device)
    except ValueError as err:
        raise ConfigError(f"--{err}") from None
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module


def command_line_options(mapping: dict[str, Any] | None, namespace: Namespace, names: list[str],
                         module: Seq2SeqModule, loaded: tuple[str, ...] = ()) -> dict[str, Any]:
    """``--decode_options`` (``mapping``) updated by each decoder option's flag given
    (``names``: those ``add_decoder_option_flags`` made), checked against ``module``'s
    family; ``loaded``: call-only options a ``--X_ckpt`` flag will load."""
    given = {name: namespace[name] for name in names if namespace[name] is not None}
    refused = ["--" + name for name in given if name not in module.decode_defaults]
    refused += [f"--{name}_ckpt" for name in loaded if name not in module.decode_defaults]
    if refused:
        raise ConfigError(f"{', '.join(refused)} does not apply to a {module.family!r} checkpoint")
    options = {**(mapping or {}), **given}
    try:
        module.check_options(options, "--decode_options")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return options


def decoder_options(run: CheckpointDecoding, namespace: Namespace, names: list[str],
                    module: Seq2SeqModule) -> dict[str, Any]:
    """The decoder options of the command line, checked against ``module``'s family; a
    reranker or drafter loaded."""
    loaded = tuple(name for name in ("rerank", "draft") if getattr(run, f"{name}_ckpt"))
    options = command_line_options(run.decode_options, namespace, names, module, loaded)
    if run.rerank_ckpt:
        options["rerank"] = load_reranker(run.rerank_ckpt, module, run.ckpt)
    if run.draft_ckpt:
        options["draft"] = load_drafter(run.draft_ckpt, module, run.ckpt)
    return options


@dataclass
class TranslateSettings:
    """Where lines come from and go."""

    input: str | None = field(default=None, metadata={"aliases": ("-i",)})
    """Input file (default: stdin)."""
    output: str | None = field(default=None, metadata={"aliases": ("-o",)})
    """Output file (default: stdout)."""
    output_format: Literal["text", "jsonl"] = "text"
    """jsonl: one object per line with text, tokens, score, passes, history, nbest."""
    nbest: int = 1
    """Hypotheses per line in jsonl (the family must give as many, e.g. beam search)."""
    chunk_lines: int = 64
    """Most input lines translated together (fewer when input is slow)."""


def cmd_translate(argv: list[str]) -> int:
    """``nargen translate``: one output line per input line, streamed as input arrives."""
    from nargen.cli.streaming import line_chunks

    _, t, batching, module, options = decoding_command("nargen translate", cmd_translate.__doc__,
                                                      TranslateSettings, argv)
    if t.nbest > 1 and module.nbest_size(options) < t.nbest:
        raise ConfigError(f"--nbest {t.nbest}: a {module.family!r} checkpoint decoding with these "
                          f"options gives {module.nbest_size(options)} hypotheses a line")
    jsonl = t.output_format == "jsonl"
    source = open(t.input, "rb") if t.input else sys.stdin.buffer
    out = open(t.output, "w", encoding="utf-8") if t.output else sys.stdout
    done = 0
    try:
        for lines in line_chunks(source, t.chunk_lines, t.input or "<stdin>"):
            result = module.translate(lines, details=jsonl, max_tokens=batching.max_tokens, **options)
            for index in result.truncated:
                print(f"warning: input line {done + index + 1} is longer than the model's maximum "
                      f"({module.model_config.max_len - 1} tokens) and was cut", file=sys.stderr)
            for i, text in enumerate(result.texts):
                if jsonl:
                    record = {"text": text, **result.details[i]}
                    record["nbest"] = record["nbest"][: t.nbest] if t.nbest > 1 else []
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(text.replace("\n", " ") + "\n")
            out.flush()
            done += len(lines)
    finally:
        if t.input:
            source.close()
        if t.output:
            out.close()
    return 0


@dataclass
class EvaluateSettings:
    """The test set and what to report."""

    src: str
    """Source side of the test set, one sentence a line."""
    ref: str
    """Reference translations, line for line."""
    json: bool = False
    """Print one JSON record."""
    output: str | None = None
    """Also write the translations here."""
    latency_sentences: int | None = None
    """Sentences timed at batch size 1 (default: all)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool | None = None
    """Progress bars on stderr (default: when stderr is a terminal)."""


def parallel_lines(src: str, ref: str) -> tuple[list[str], list[str]]:
    """A test set's sources and references; both files must have as many lines."""
    sources, refs = read_lines(src), read_lines(ref)
    if len(sources) != len(refs):
        raise CorpusError(f"{src} has {len(sources)} lines, {ref} has {len(refs)}")
    return sources, refs


def cmd_evaluate(argv: list[str]) -> int:
    """``nargen evaluate``: sacreBLEU, chrF and speed on a test set."""
    from nargen.evaluation import evaluate, format_record

    run, e, batching, module, options = decoding_command("nargen evaluate", cmd_evaluate.__doc__,
                                                        EvaluateSettings, argv)
    if e.threads:
        torch.set_num_threads(e.threads)
    sources, refs = parallel_lines(e.src, e.ref)
    progress = sys.stderr.isatty() if e.progress is None else e.progress
    record, texts = evaluate(module, sources, refs, latency_sentences=e.latency_sentences, progress=progress,
                             max_tokens=batching.max_tokens, **options)
    record.update({"checkpoint": run.ckpt, "src": e.src, "ref": e.ref})
    if e.output:
        Path(e.output).write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    print(json.dumps(record, indent=2) if e.json else format_record(record))
    return 0


@dataclass
class DistillSettings:
    """The corpus to translate and where the distilled copy goes."""

    out: str
    """Folder of the distilled corpus (train on it with --data.root OUT)."""
    corpus: str = "multi30k"
    """The corpus's name."""
    root: str | None = None
    """Corpus folder (default $NARGEN_DATA or data/<corpus>)."""
    pair: str = "de-en"
    """Source and target language."""
    split: str = "train"
    """The split translated."""
    copy_splits: list[str] = field(default_factory=lambda: ["val", "test_2016_flickr"])
    """Splits copied unchanged beside the distilled one (first: validation)."""
    chunk_lines: int = 2000
    """Lines translated between two saves of the progress (resumable)."""


def cmd_distill(argv: list[str]) -> int:
    """``nargen distill``: translate a corpus with a teacher (resumable)."""
    from nargen.distill import distill

    run, d, batching, module, options = decoding_command("nargen distill", cmd_distill.__doc__,
                                                        DistillSettings, argv)
    src, tgt = d.pair.split("-")
    root = Path(d.root) if d.root else default_root(d.corpus)
    if batching.max_tokens:
        options["max_tokens"] = batching.max_tokens
    target = distill(module, run.ckpt, root, d.out, src_lang=src, tgt_lang=tgt, split=d.split,
                     copy_splits=tuple(d.copy_splits), chunk_lines=d.chunk_lines,
                     log=lambda message: print(message, file=sys.stderr), **options)
    print(f"wrote {target}; train on it with --data.root {d.out}")
    return 0
