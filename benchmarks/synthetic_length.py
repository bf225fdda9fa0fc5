"""Length generalization on a synthetic copy task: trained on sequences of at most
MAX_TRAIN words, tested on sequences of 16 to 1,024 words, for each position scheme.

The corpus is random words of a 30-word vocabulary (one SentencePiece token each), the
target a copy of the source. One micro autoregressive model is trained per scheme
(rotary positions, absolute positions, rotary with a sliding window), all with the same
steps and seed, then decoded greedily on test sets of each length. Prints exact-match
and token accuracy by length (Markdown) and writes JSON.

    python benchmarks/synthetic_length.py --out runs/synthetic_length
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ("ka lo mi nu pe ro su ti ve za bu xo ga he ji ko lu ma ne po "
         "qu ri sa te vu wa ye zo fa di").split()
SCHEMES = {
    "rotary": {},
    "absolute": {"rotary_positions": False, "absolute_positions": True},
    "rotary+window": {"encoder_window": 16, "decoder_window": 16},
}


def write_corpus(folder: Path, max_train: int, test_lengths: list[int], seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def split(name: str, lengths: list[int]) -> None:
        lines = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]
        for lang in ("src", "tgt"):
            (folder / f"{name}.{lang}").write_text("\n".join(lines) + "\n")

    split("train", [rng.randint(1, max_train) for _ in range(20_000)])
    split("val", [rng.randint(1, max_train) for _ in range(100)])
    for n in test_lengths:
        split(f"test_{n}", [n] * 20)


def train(folder: Path, run_dir: Path, scheme: dict, steps: int, max_len: int) -> Path:
    model = {"preset": "micro", "dropout": 0.0, "max_len": max_len, **scheme}
    args = [
        sys.executable, "-m", "nargen.cli.main", "fit", "--family", "autoregressive",
        "--model", json.dumps(model), "--data.corpus", "copy", "--data.root", str(folder),
        "--data.src_lang", "src", "--data.tgt_lang", "tgt", "--data.test_split", "",
        "--data.vocab_size", "40", "--data.max_tokens", "2000", "--data.max_len", str(max_len),
        "--optim.lr", "3e-3", "--optim.warmup_steps", "100", "--optim.label_smoothing", "0.0",
        "--trainer.max_steps", str(steps), "--trainer.val_every_steps", str(steps),
        "--trainer.checkpoint_every_steps", str(steps), "--trainer.run_dir", str(run_dir),
        "--trainer.progress_bar", "false", "--trainer.precision", "32-true", "--eval.decodes", "[]",
    ]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return run_dir / "checkpoints" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/synthetic_length")
    parser.add_argument("--max-train", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    from nargen.data import read_split
    from nargen.models import load_module

    out = Path(args.out)
    write_corpus(out / "corpus", args.max_train, args.lengths)
    max_len = max(args.lengths) + 16
    rows = []
    for name, scheme in SCHEMES.items():
        checkpoint = train(out / "corpus", out / name, scheme, args.steps, max_len)
        module = load_module(checkpoint, map_location="cpu").eval()
        row = {"scheme": name, "exact": {}, "token_accuracy": {}}
        for n in args.lengths:
            test = read_split(out / "corpus", f"test_{n}", "src", "tgt")
            outputs = module.translate(test.source, max_len_a=1.0, max_len_b=8).texts
            row["exact"][n] = sum(o == r for o, r in zip(outputs, test.target)) / len(outputs)
            right = sum(sum(a == b for a, b in zip(o.split(), r.split())) for o, r in zip(outputs, test.target))
            row["token_accuracy"][n] = round(right / sum(len(r.split()) for r in test.target), 3)
            print(f"{name} {n}: exact {row['exact'][n]:.2f} tokens {row['token_accuracy'][n]:.3f}", file=sys.stderr)
        rows.append(row)
    (out / "synthetic_length.json").write_text(json.dumps(
        {"max_train": args.max_train, "steps": args.steps, "rows": rows}, indent=2))
    print(f"Copy task, trained on 1-{args.max_train} words, {args.steps} updates; greedy; "
          "token accuracy (exact-match rate in brackets) by test length:")
    print("| scheme | " + " | ".join(str(n) for n in args.lengths) + " |")
    print("|---|" + "---:|" * len(args.lengths))
    for row in rows:
        print(f"| {row['scheme']} | " + " | ".join(
            f"{row['token_accuracy'][n]:.3f} ({row['exact'][n]:.2f})" for n in args.lengths) + " |")


if __name__ == "__main__":
    main()
