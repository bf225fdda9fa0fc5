"""The ``nargen`` command: fit, prepare, translate, evaluate, diagnose, distill, download, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from nargen.bench.training import cmd_bench_train
from nargen.cli.config import ConfigError, parse_fit_args, to_dict
from nargen.cli.prepare import cmd_prepare
from nargen.data import CorpusError
from nargen.data.corpora import NAMED_CORPORA, default_root, download
from nargen.data.corpus import read_lines
from nargen.memory import keep_freed_memory
from nargen.cli.options import load_drafter, load_reranker, unknown_options
from nargen.models import CheckpointError, DecodeConfig, NonFiniteTrainingError, Seq2SeqModule, load_module
from nargen.models.base import check_decode_options
from nargen.decoding.precision import DECODING_DTYPES, decoding_dtype


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _mapping(text: str) -> dict:
    """A YAML mapping given on the command line (``--decode-options``)."""
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{beam: 4}}', got {text!r}")
    return value


def _load_for_decoding(args: argparse.Namespace, device: str | None = None) -> Seq2SeqModule:
    """The checkpoint on ``device`` (default: a GPU if any) in ``--dtype``."""
    module = load_module(args.ckpt, map_location=device or _device())
    try:
        dtype = decoding_dtype(args.dtype, module.device)
    except ValueError as err:
        raise ConfigError(f"--{err}") from None
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module


def _decode_options(args: argparse.Namespace, module: Seq2SeqModule) -> dict:
    """Decoder options given on the command line, checked against the family."""
    options: dict = dict(args.decode_options or {})
    try:
        check_decode_options(module.family, module.decode_defaults, options, "--decode-options",
                             module.call_only_options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.beam is not None:
        options["beam"] = args.beam
    if args.length_penalty is not None:
        options["length_penalty"] = args.length_penalty
    if args.iterations is not None:
        options["iterations"] = args.iterations
    if args.length_beam is not None:
        options["length_beam"] = args.length_beam
    if args.latent_beam is not None:
        options["latent_beam"] = args.latent_beam
    if args.early_stop:
        options["early_stop"] = True
    if args.sequential:
        options["parallel"] = False
    if args.close_ended_slots:
        options["close_ended_slots"] = True
    if args.eos_penalty is not None:
        options["eos_penalty"] = args.eos_penalty
    if args.decoder is not None:
        options["decoder"] = args.decoder
    if args.no_dedup:
        options["dedup"] = False
    if args.rerank_ckpt:
        options["rerank"] = load_reranker(args.rerank_ckpt, module, args.ckpt)
    if args.draft_ckpt:
        options["draft"] = load_drafter(args.draft_ckpt, module, args.ckpt)
    if args.block is not None:
        options["block"] = args.block
    if args.draft_confidence is not None:
        options["draft_confidence"] = args.draft_confidence
    if args.compile:
        options["compile"] = True
    drawn = {"temperature": args.temperature, "top_k": args.top_k, "seed": args.seed}
    drawn = {k: v for k, v in drawn.items() if v is not None}
    if drawn and not args.sampling:
        raise ConfigError(", ".join("--" + k.replace("_", "-") for k in drawn) + " needs --sampling")
    if args.sampling:
        options.update(sampling=True, **drawn)
    unknown = unknown_options(module, list(options))
    if unknown:
        flag_of = {"rerank": "rerank-ckpt", "parallel": "sequential", "draft": "draft-ckpt", "dedup": "no-dedup"}
        unknown = [name for name in unknown if name not in ("temperature", "top_k", "seed")]
        flags = ", ".join("--" + flag_of.get(name, name).replace("_", "-") for name in unknown)
        raise ConfigError(f"{flags} does not apply to a {module.family!r} checkpoint")
    if args.max_tokens:
        options["max_tokens"] = args.max_tokens
    return options


def cmd_fit(argv: list[str]) -> int:
    """``nargen fit``: jsonargparse reads the recipe and overrides (``--help`` lists every key)."""
    import yaml

    from nargen.cli.fit import run_fit

    config, print_config = parse_fit_args(argv)
    if print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    summary = run_fit(config)
    if summary is None:  # not the main process of a multi-process run
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "test"}, indent=2))
    for record in summary.get("test", []):
        print(format_record(record))
    return 0


def format_record(record: dict) -> str:
    lines = [
        f"{record.get('split', 'test')} {record['family']} "
        f"{' '.join(f'{k}={v}' for k, v in record['options'].items() if k != 'max_tokens') or 'defaults'}: "
        f"BLEU {record['bleu']:.2f}  chrF {record['chrf']:.2f}  "
        f"repetition {record['repetition_rate']:.4f}  hit length cap {record['hit_length_cap']}",
        f"  {record['bleu_signature']}",
        f"  {record['chrf_signature']}",
        f"  {record['sentences_per_s']} sentences/s batched; "
        + (f"batch-1 {record['batch1_ms_mean']} ms/sentence (p90 {record['batch1_ms_p90']}) "
           f"over {record['batch1_sentences']} sentences; "
           f"{record['mean_passes_per_sentence']} decoder passes/sentence; "
           if "batch1_ms_mean" in record else "no batch-1 timing; ")
        + f"{record['device']}, {record['threads']} threads",
    ]
    if "batch1_draft_acceptance" in record:
        from nargen.bench.report import speculative_summary

        lines.append(f"  speculative at batch 1, per sentence: {speculative_summary(record)}")
    return "\n".join(lines)


def cmd_translate(args: argparse.Namespace) -> int:
    from nargen.cli.streaming import line_chunks

    module = _load_for_decoding(args, args.device)
    options = _decode_options(args, module)
    if args.nbest > 1:
        if module.nbest_size(options) < args.nbest:
            raise ConfigError(f"--nbest {args.nbest}: a {module.family!r} checkpoint decoding with these "
                              f"options gives {module.nbest_size(options)} hypotheses a line "
                              "(autoregressive beam search gives --beam)")
    if args.history:
        if unknown_options(module, ["keep_history"]):
            raise ConfigError(f"--history does not apply to a {module.family!r} checkpoint")
        options["keep_history"] = True
    jsonl = args.output_format == "jsonl"
    source = open(args.input, "rb") if args.input else sys.stdin.buffer
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    done = 0
    try:
        for lines in line_chunks(source, args.chunk_lines, args.input or "<stdin>"):
            result = module.translate(lines, details=jsonl, **options)
            for index in result.truncated:
                print(f"warning: input line {done + index + 1} is longer than the model's maximum "
                      f"({module.model_config.max_len - 1} tokens) and was cut", file=sys.stderr)
            for i, text in enumerate(result.texts):
                if jsonl:
                    record = {"text": text, **result.details[i]}
                    record["nbest"] = record["nbest"][: args.nbest] if args.nbest > 1 else []
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(text.replace("\n", " ") + "\n")
            out.flush()
            done += len(lines)
    finally:
        if args.input:
            source.close()
        if args.output:
            out.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nargen.evaluation import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    module = _load_for_decoding(args)
    sources, refs = read_lines(args.src), read_lines(args.ref)
    if len(sources) != len(refs):
        raise CorpusError(f"{args.src} has {len(sources)} lines, {args.ref} has {len(refs)}")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    record, texts = evaluate(
        module, sources, refs, latency_sentences=args.latency_sentences, progress=progress,
        **_decode_options(args, module),
    )
    record.update({"checkpoint": str(args.ckpt), "src": str(args.src), "ref": str(args.ref)})
    if args.output:
        Path(args.output).write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    print(json.dumps(record, indent=2) if args.json else format_record(record))
    return 0


def report_written(files: list[Path], missing_plots: str | None) -> None:
    """Name the files a report wrote, and why it has no plots when it has none."""
    if missing_plots:
        print(f"no plots: {missing_plots}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files))


def cmd_diagnose(args: argparse.Namespace) -> int:
    from nargen.diagnose import diagnose, markdown, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.ckpt, map_location=_device())
    if args.eos_penalty is not None:
        if unknown_options(module, ["eos_penalty"]):
            raise ConfigError(f"--eos-penalty does not apply to a {module.family!r} checkpoint")
        module.decode_config.options = {**module.decode_config.options, "eos_penalty": args.eos_penalty}
    teacher = load_module(args.teacher_ckpt, map_location=_device()) if args.teacher_ckpt else None
    sources, refs = read_lines(args.src), read_lines(args.ref)
    if len(sources) != len(refs):
        raise CorpusError(f"{args.src} has {len(sources)} lines, {args.ref} has {len(refs)}")
    if args.limit:
        sources, refs = sources[: args.limit], refs[: args.limit]
    try:
        report = diagnose(
            module, sources, refs, teacher=teacher, iterations=tuple(args.iterations),
            length_beams=tuple(args.length_beams), seed=args.seed,
            max_tokens=args.max_tokens or module.decode_config.max_tokens,
            eos_penalties=tuple(args.eos_penalties),
            log=lambda message: print(message, file=sys.stderr),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    report.update({"checkpoint": str(args.ckpt), "source": str(args.src), "reference": str(args.ref),
                   "teacher": str(args.teacher_ckpt) if args.teacher_ckpt else None})
    print(markdown(report))
    report_written(*write_report(report, args.out))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from nargen.training.averaging import average_checkpoints

    out = average_checkpoints(args.ckpts, args.out)
    print(f"wrote {out}: the mean of {len(args.ckpts)} checkpoints")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from nargen.distill import distill

    module = _load_for_decoding(args)
    src, tgt = args.pair.split("-")
    root = Path(args.root) if args.root else default_root(args.corpus)
    target = distill(
        module, args.ckpt, root, args.out, src_lang=src, tgt_lang=tgt, split=args.split,
        copy_splits=tuple(args.copy_splits), chunk_lines=args.chunk_lines,
        log=lambda message: print(message, file=sys.stderr), **_decode_options(args, module),
    )
    print(f"wrote {target}; train on it with --data.root {args.out}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    corpus = NAMED_CORPORA[args.corpus]
    root = Path(args.root) if args.root else default_root(args.corpus)
    langs = args.pair.split("-") if args.pair else corpus.langs
    fetched = download(corpus, root, args.splits or corpus.splits, langs, base_url=args.base_url,
                       allow_unchecked=args.allow_unchecked)
    print(f"{root}: wrote {len(fetched)} files" + (f" ({', '.join(p.name for p in fetched)})" if fetched else " (all present)"))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "systems":
        return bench_systems(args)
    return bench_kv_cache(args)


def bench_systems(args: argparse.Namespace) -> int:
    from nargen.bench.systems import load_bench_spec, run_bench, split_missing
    from nargen.bench.report import markdown_table, write_report

    spec, systems = load_bench_spec(args.spec)
    left_out: list[dict] = []
    if args.skip_missing:
        systems, left_out = split_missing(systems)
        for row in left_out:
            print(f"left out {row['system']}: no {', '.join(row['missing'])}", file=sys.stderr)
        if not systems:
            raise ConfigError(f"{args.spec}: no system has its checkpoints")
    if args.latency_sentences is not None:
        spec.latency_sentences = args.latency_sentences
    if args.threads:
        spec.threads = args.threads
    result = run_bench(spec, systems, log=lambda message: print(message, file=sys.stderr))
    result["left_out"] = left_out
    print(markdown_table(result))
    report_written(*write_report(result, args.out))
    return 0


def bench_kv_cache(args: argparse.Namespace) -> int:
    from nargen.data.batching import token_budget_batches
    from nargen.decoding import greedy

    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.ckpt, map_location=_device())
    if not module.incremental:
        raise ConfigError(f"{args.ckpt}: kv-cache measures decoding token by token through the cache; "
                          f"a {module.family!r} checkpoint decodes otherwise")
    sources = read_lines(args.src)[: args.sentences]
    ids = module.source_ids(sources)
    max_tokens = args.max_tokens or module.decode_config.max_tokens
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
    print(f"greedy decoding of {n} sentences from {args.src} ({len(batches)} batches, "
          f"max_tokens {max_tokens}, {module.device}, {torch.get_num_threads()} threads)")
    print(f"  with KV cache:    {seconds[True]:.2f} s  ({n / seconds[True]:.1f} sentences/s)")
    print(f"  without KV cache: {seconds[False]:.2f} s  ({n / seconds[False]:.1f} sentences/s)")
    print(f"  speed-up from the cache: {seconds[False] / seconds[True]:.2f}x; outputs identical: {same}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nargen import __version__

    parser = argparse.ArgumentParser(
        prog="nargen",
        description="Non-autoregressive and latent-variable translation on one transformer core: "
                    "fit, prepare, translate, evaluate, diagnose, distill, average, download, bench.",
    )
    parser.add_argument("--version", action="version", version=f"nargen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    # fit has its own parser (nargen.cli.config.fit_parser); listed here for --help
    sub.add_parser("fit", add_help=False,
                   help="train a recipe (nargen fit RECIPE.yaml); any key overridable as --section.key VALUE")

    sub.add_parser("prepare", add_help=False,  # fit's parser: the recipe's data section counts
                   help="tokenize a recipe's training corpus once into memory-mapped ids (fit does it on first use)")

    def batching(p: argparse.ArgumentParser) -> None:
        group = p.add_argument_group("batching")
        group.add_argument("--max-tokens", type=int, default=0,
                           help="source tokens per decoding batch (default: the checkpoint's "
                                f"decode.max_tokens, {DecodeConfig.max_tokens} unless its recipe says)")

    def decoding(p: argparse.ArgumentParser) -> None:
        batching(p)
        p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by nargen fit")
        p.add_argument("--decode-options", type=_mapping, default=None, metavar="MAPPING",
                       help="decoder options of the checkpoint's family as a YAML mapping, with the "
                            "names recipes use (decode.options), e.g. '{iterations: 4, length_beam: 3}'; "
                            "the flags below override it")
        p.add_argument("--beam", type=int, default=None, help="autoregressive, ctc: beam size (1 = greedy)")
        p.add_argument("--length-penalty", type=float, default=None,
                       help="autoregressive and ctc beam, dag viterbi")
        p.add_argument("--iterations", type=int, default=None, help="cmlm: mask-predict iterations")
        p.add_argument("--length-beam", type=int, default=None, help="nat/cmlm: lengths tried")
        p.add_argument("--latent-beam", type=int, default=None,
                       help="latent: the prior's beam; with --rerank-ckpt its k best latent sequences "
                            "(or k samples, with --sampling) are decoded and rescored")
        p.add_argument("--early-stop", action="store_true",
                       help="cmlm: freeze a candidate once an iteration changes none of its tokens")
        p.add_argument("--sequential", action="store_true",
                       help="insertion: one insertion a pass instead of one in every open slot")
        p.add_argument("--close-ended-slots", action="store_true",
                       help="insertion, parallel: a slot that predicted end-of-slot stays closed at later "
                            "passes (default: every slot is scored afresh each pass)")
        p.add_argument("--eos-penalty", type=float, default=None,
                       help="insertion: a slot ends only when ending beats its best insertion by this "
                            "much in log probability")
        p.add_argument("--decoder", choices=["greedy", "lookahead", "viterbi", "joint_viterbi"], default=None,
                       help="dag: how to find the output path (viterbi: links only; joint_viterbi: links "
                            "and tokens)")
        p.add_argument("--no-dedup", action="store_true",
                       help="dag: emit every path vertex's token (default: a token equal to the one "
                            "before it is dropped, as the reference decoders do)")
        p.add_argument("--rerank-ckpt", default=None,
                       help="nat/cmlm: autoregressive checkpoint that rescores the length beam; "
                            "latent: that rescores the latent candidates")
        p.add_argument("--draft-ckpt", default=None,
                       help="autoregressive greedy: speculative decoding with this drafter "
                            "(any family's checkpoint); same output, fewer passes")
        p.add_argument("--block", type=int, default=None,
                       help="speculative, blockwise: tokens drafted per block (blockwise: 0 = plain greedy)")
        p.add_argument("--draft-confidence", type=float, default=None,
                       help="blockwise: a block ends before a token its head gives less probability")
        p.add_argument("--compile", action="store_true",
                       help="autoregressive greedy, sampling, beam: each decoder step compiled once "
                            "(torch.compile over a fixed-shape KV cache; CUDA graphs on a GPU) and replayed")
        p.add_argument("--sampling", action="store_true",
                       help="autoregressive, latent (its prior): draw tokens instead of the argmax")
        p.add_argument("--temperature", type=float, default=None, help="sampling: softmax temperature (default 1)")
        p.add_argument("--top-k", type=int, default=None, help="sampling: draw among the k most likely (default 0: all)")
        p.add_argument("--seed", type=int, default=None, help="sampling: seed for a repeatable draw")
        p.add_argument("--dtype", choices=["auto", *DECODING_DTYPES], default="auto",
                       help="weights and activations: auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16 or "
                            "fp16 (GPU)")

    tr = sub.add_parser("translate", help="one output line per input line, streamed as input arrives")
    decoding(tr)
    tr.add_argument("-i", "--input", help="input file (default: stdin)")
    tr.add_argument("-o", "--output", help="output file (default: stdout)")
    tr.add_argument("--output-format", choices=["text", "jsonl"], default="text",
                    help="jsonl: one object per line with text, tokens, score, passes, history, nbest")
    tr.add_argument("--nbest", type=int, default=1, help="autoregressive beam: hypotheses per line (jsonl)")
    tr.add_argument("--history", action="store_true",
                    help="cmlm, insertion: the text after each refinement pass (jsonl)")
    tr.add_argument("--chunk-lines", type=int, default=64,
                    help="most input lines translated together (fewer when input is slow)")
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU if any)")

    ev = sub.add_parser("evaluate", help="sacreBLEU, chrF and speed on a test set")
    decoding(ev)
    ev.add_argument("--src", required=True)
    ev.add_argument("--ref", required=True)
    ev.add_argument("--json", action="store_true", help="print one JSON record")
    ev.add_argument("--output", help="also write the translations here")
    ev.add_argument("--latency-sentences", type=int, default=None,
                    help="sentences timed at batch size 1 (default: all)")
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bars on stderr (default: when stderr is a terminal)")

    di = sub.add_parser("distill", help="translate a corpus with a teacher (resumable)")
    decoding(di)
    di.add_argument("--corpus", default="multi30k")
    di.add_argument("--root", help="corpus folder (default $NARGEN_DATA or data/<corpus>)")
    di.add_argument("--pair", default="de-en")
    di.add_argument("--split", default="train")
    di.add_argument("--copy-splits", nargs="*", default=["val", "test_2016_flickr"],
                    help="splits copied unchanged beside the distilled one (first = validation)")
    di.add_argument("--out", required=True)
    di.add_argument("--chunk-lines", type=int, default=2000)

    dg = sub.add_parser("diagnose", help="oracle length, oracle order and the learned order of a parallel checkpoint")
    dg.add_argument("--ckpt", required=True, help="nat, cmlm, insertion, latent, ctc or dag checkpoint")
    dg.add_argument("--src", required=True)
    dg.add_argument("--ref", required=True)
    dg.add_argument("--out", required=True, help="folder for diagnose.json, diagnose.md and the plots")
    dg.add_argument("--teacher-ckpt", default=None,
                    help="autoregressive checkpoint (same tokenizer) for the easiest-first order")
    dg.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 4, 10],
                    help="mask-predict iterations to try")
    dg.add_argument("--length-beams", type=int, nargs="+", default=[1, 5],
                    help="predicted-length beams to set against the reference length")
    dg.add_argument("--seed", type=int, default=1, help="for the random order")
    dg.add_argument("--eos-penalty", type=float, default=None,
                    help="insertion: decode with this end-of-slot penalty instead of the checkpoint's own")
    dg.add_argument("--eos-penalties", type=float, nargs="*", default=[0.0, 1.0, 2.0, 3.0, 4.0],
                    help="insertion: also decode at each of these end-of-slot penalties (none: skip)")
    dg.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    batching(dg)
    dg.add_argument("--threads", type=int, default=0)

    av = sub.add_parser("average", help="average checkpoints' weights into one checkpoint")
    av.add_argument("ckpts", nargs="+", help="checkpoints of one run, e.g. runs/X/checkpoints/step-*.ckpt")
    av.add_argument("--out", required=True, help="the averaged checkpoint to write")

    dl = sub.add_parser("download", help="fetch a named corpus (needs a network)")
    dl.add_argument("corpus", choices=sorted(NAMED_CORPORA))
    dl.add_argument("--root", help="target folder (default $NARGEN_DATA or data/<corpus>)")
    dl.add_argument("--pair", default=None, help="e.g. de-en (default: the corpus's languages)")
    dl.add_argument("--splits", nargs="+", default=None, help="default: all of the corpus's splits")
    dl.add_argument("--base-url", default=None, help="mirror holding the same file names")
    dl.add_argument("--allow-unchecked", action="store_true",
                    help="fetch files whose digest nargen does not know (it says which)")

    be = sub.add_parser("bench", help="quality and speed benchmarks")
    what = be.add_subparsers(dest="what", required=True)
    sy = what.add_parser("systems", help="every system of a spec in one process: JSON, Markdown, plot")
    sy.add_argument("--spec", required=True, help="YAML bench spec, e.g. recipes/multi30k/bench/parallel_tiny.yaml")
    sy.add_argument("--out", required=True, help="folder for bench.json, bench.md and the plots (PNG, SVG)")
    sy.add_argument("--latency-sentences", type=int, default=None,
                    help="sentences timed at batch size 1 (default: the spec's, else all)")
    sy.add_argument("--threads", type=int, default=0)
    sy.add_argument("--skip-missing", action="store_true",
                    help="leave out systems whose checkpoints are not there yet (named in the table)")
    what.add_parser("train", add_help=False,  # its own parser: nargen.bench.training
                    help="training target tokens/s of a recipe over N updates after a warm-up")
    kv = what.add_parser("kv-cache", help="greedy decoding with vs without the KV cache")
    kv.add_argument("--ckpt", required=True)
    kv.add_argument("--src", required=True)
    kv.add_argument("--sentences", type=int, default=200)
    batching(kv)
    kv.add_argument("--threads", type=int, default=0)
    return parser


def show_progress_messages() -> None:
    """The library's log messages (a corpus being prepared, lines dropped) on stderr."""
    logger = logging.getLogger("nargen")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nargen: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    show_progress_messages()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    own_parsers = {("fit",): cmd_fit, ("prepare",): cmd_prepare,  # recipe overrides
                   ("bench", "train"): cmd_bench_train}
    for words, command in own_parsers.items():
        if tuple(argv[: len(words)]) == words:
            try:
                return command(argv[len(words):])
            except (ConfigError, CorpusError, CheckpointError, NonFiniteTrainingError) as err:
                print(f"nargen {' '.join(words)}: error: {err}", file=sys.stderr)
                return 2
    args = parser.parse_args(argv)
    try:
        return {"translate": cmd_translate, "evaluate": cmd_evaluate, "distill": cmd_distill,
                "diagnose": cmd_diagnose, "average": cmd_average,
                "download": cmd_download, "bench": cmd_bench}[args.command](args)
    except (ConfigError, CorpusError, CheckpointError, NonFiniteTrainingError) as err:
        print(f"nargen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
