"""Corpus size against start-up cost: prepare time, start and resume time, peak resident
memory and training speed for synthetic corpora of N pairs built from Multi30K.

Each size gets a folder whose training split is Multi30K's, repeated (and cut) to N pairs,
beside Multi30K's own validation split. For each size, in separate processes:
``nargen prepare`` (timed, peak memory), ``nargen fit`` for a few updates on the prepared
corpus (seconds from process start to the first update, target tokens/s, peak memory),
the same run resumed for a few more updates, and optionally a 2-process DDP fit (each
rank's peak memory). Prints a Markdown table and writes ``OUT/scale_data.json``.

    python benchmarks/scale_data.py --pairs 29000 1000000 4500000 --out runs/scale_data
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nargen.data.corpora import default_root, find_split_file  # noqa: E402


def build_corpus(multi30k: Path, folder: Path, pairs: int) -> Path:
    """``folder`` with train.de/train.en of ``pairs`` lines (Multi30K's train repeated) and
    Multi30K's validation split; kept when it is already there."""
    if (folder / "train.en").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        lines = gzip.open(find_split_file(multi30k, "train", lang), "rb").read().splitlines(keepends=True)
        with open(folder / f"train.{lang}.part", "wb") as out:
            written = 0
            while written < pairs:
                chunk = lines[: pairs - written]
                out.writelines(chunk)
                written += len(chunk)
        (folder / f"train.{lang}.part").replace(folder / f"train.{lang}")
        shutil.copyfile(find_split_file(multi30k, "val", lang), folder / f"val.{lang}.gz")
    return folder


def run(args: list[str], log: Path, threads: int) -> dict[str, Any]:
    """Run ``nargen ARGS`` in its own process: wall seconds, peak resident MiB (from
    ``wait4``, so this process alone) and the JSON summary it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "nargen.cli.main", *args], stdout=subprocess.PIPE,
                                stderr=handle, env=env, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"nargen {' '.join(args)} failed; see {log}")
    summary = json.loads(stdout[stdout.index("{"): stdout.rindex("}") + 1])
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024), "summary": summary}


def measure(recipe: str, corpus: Path, out: Path, steps: int, resume_steps: int, threads: int,
            ddp: bool) -> dict[str, Any]:
    cache, run_dir = out / "cache", out / "run"
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    data = ["--data.root", str(corpus), "--data.cache_dir", str(cache), "--data.valid_bleu_sentences", "100"]
    prepared = run(["prepare", recipe, *data], out / "prepare.log", threads)
    fit_args = [recipe, *data, "--trainer.max_time_minutes", "0", "--trainer.run_dir", str(run_dir),
                "--trainer.checkpoint_every_steps", str(steps), "--trainer.threads", str(threads),
                "--eval.decodes", "[]", "--eval.latency_sentences", "0", "--eval.average_best", "0"]
    fitted = run(["fit", *fit_args, "--trainer.max_steps", str(steps)], out / "fit.log", threads)
    resumed = run(["fit", *fit_args, "--trainer.max_steps", str(steps + resume_steps)], out / "resume.log", threads)
    row: dict[str, Any] = {
        "pairs": prepared["summary"]["pairs"],
        "prepare_s": prepared["wall_s"],
        "prepare_pairs_per_s": round(prepared["summary"]["pairs"] / prepared["wall_s"]),
        "prepare_peak_rss_mib": prepared["peak_rss_mib"],
        "start_s": fitted["summary"]["seconds_to_first_update"],
        "resume_start_s": resumed["summary"]["seconds_to_first_update"],
        "fit_peak_rss_mib": fitted["peak_rss_mib"],
        "train_target_tok_s": fitted["summary"]["target_tokens_per_s"],
        "steps": fitted["summary"]["steps"],
    }
    if ddp:
        shutil.rmtree(run_dir, ignore_errors=True)
        two = run(["fit", *fit_args, "--trainer.max_steps", str(steps), "--trainer.strategy", "ddp",
                   "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.threads", "1"],
                  out / "ddp.log", 1)
        row["ddp_rank_peak_rss_mib"] = two["summary"]["peak_rss_mib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[29_000, 1_000_000, 4_500_000])
    parser.add_argument("--recipe", default="recipes/multi30k/ar_tiny.yaml")
    parser.add_argument("--multi30k", default=None, help="Multi30K folder (default $NARGEN_DATA or data/multi30k)")
    parser.add_argument("--out", default="runs/scale_data")
    parser.add_argument("--steps", type=int, default=40, help="updates timed per fit")
    parser.add_argument("--resume-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp", action="store_true", help="also a 2-process DDP fit (each rank's peak memory)")
    args = parser.parse_args()
    multi30k = Path(args.multi30k) if args.multi30k else default_root("multi30k")
    out = Path(args.out)
    rows = []
    for pairs in args.pairs:
        corpus = build_corpus(multi30k, out / f"corpus-{pairs}", pairs)
        rows.append(measure(args.recipe, corpus, out / f"measure-{pairs}", args.steps, args.resume_steps,
                            args.threads, args.ddp))
        print(json.dumps(rows[-1]), file=sys.stderr)
    (out / "scale_data.json").write_text(json.dumps({"recipe": args.recipe, "steps": args.steps, "rows": rows},
                                                    indent=2))
    columns = ["pairs", "prepare_s", "prepare_pairs_per_s", "prepare_peak_rss_mib", "start_s",
               "resume_start_s", "fit_peak_rss_mib", "train_target_tok_s"]
    if args.ddp:
        columns.append("ddp_rank_peak_rss_mib")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
