"""BLEU against input length: a test set made longer by joining consecutive sentences.

Each checkpoint translates the test split as it is, then with every 2, 4 and 8
consecutive sentences joined into one input (their references joined the same way), with
its own default decoder (greedy for an autoregressive model). Prints a Markdown table of
sacreBLEU by join, with the mean source length in tokens, and writes JSON.

    python benchmarks/length_generalization.py --ckpt rope=runs/len/ar_rope/checkpoints/best.ckpt \\
        --ckpt absolute=runs/len/ar_absolute/checkpoints/best.ckpt --out runs/len/report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nargen.data import read_split  # noqa: E402
from nargen.data.corpora import default_root  # noqa: E402
from nargen.models import load_module  # noqa: E402


def joined(lines: list[str], k: int) -> list[str]:
    """Every ``k`` consecutive lines as one (a last incomplete group is left out)."""
    return [" ".join(lines[i:i + k]) for i in range(0, len(lines) - len(lines) % k, k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    parser.add_argument("--root", default=None, help="corpus folder (default $NARGEN_DATA or data/multi30k)")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--pair", default="de-en")
    parser.add_argument("--joins", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    src_lang, tgt_lang = args.pair.split("-")
    test = read_split(Path(args.root) if args.root else default_root("multi30k"), args.split, src_lang, tgt_lang)
    rows = []
    for spec in args.ckpt:
        name, path = spec.split("=", 1)
        module = load_module(path, map_location="cpu").eval()
        row = {"system": name, "family": module.family, "checkpoint": path, "bleu": {}, "source_tokens": {}}
        for k in args.joins:
            sources, refs = joined(test.source, k), joined(test.target, k)
            out = module.translate(sources).texts
            metric = sacrebleu.metrics.BLEU()
            bleu = metric.corpus_score(out, [refs])
            row["bleu"][k] = round(bleu.score, 2)
            row["source_tokens"][k] = round(sum(len(ids) for ids in module.tokenizer.encode(sources)) / len(sources), 1)
            row["signature"] = str(metric.get_signature())
            print(f"{name} x{k}: BLEU {bleu.score:.2f} ({row['source_tokens'][k]} source tokens)", file=sys.stderr)
        rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"split": args.split, "rows": rows}, indent=2))
    print("| system | family | " + " | ".join(f"x{k}" for k in args.joins) + " |")
    print("|---|---|" + "---:|" * len(args.joins))
    for row in rows:
        print(f"| {row['system']} | {row['family']} | "
              + " | ".join(f"{row['bleu'][k]:.2f}" for k in args.joins) + " |")
    print("| source tokens (mean) | | " + " | ".join(f"{rows[0]['source_tokens'][k]}" for k in args.joins) + " |")
    print(f"sacreBLEU {rows[0]['signature']}")


if __name__ == "__main__":
    main()
