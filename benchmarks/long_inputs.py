"""Cost at length: batch-1 latency and peak memory of autoregressive greedy decoding and
of one parallel decoder pass, full attention against a sliding window.

An untrained tiny model (costs do not depend on the weights). Autoregressive: N decoder
steps with the KV cache from a source of 128 random tokens (so what grows is the
decoder's own context), each step's token the previous step's argmax (no stop at EOS,
so every run makes exactly N steps); the time per token over the whole output and over
its last 128 steps. One pass: a source of N random tokens, the encoder and a
bidirectional decoder over N positions. Peak memory is the process's
resident high-water mark over the run, above what was resident before it. Prints a
Markdown table, writes JSON and a plot.

    python benchmarks/long_inputs.py --out runs/long_inputs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nargen.core import TransformerConfig  # noqa: E402
from nargen.core.transformer import Seq2SeqTransformer  # noqa: E402
from nargen.memory import keep_freed_memory, peak_bytes, reset_peak  # noqa: E402

BOS, MASK = 1, 4


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(run, *args) -> tuple[float, float, object]:
    """Seconds and peak MiB above the resident memory at the start, and the result."""
    reset_peak("cpu")
    before = resident_bytes()
    started = time.perf_counter()
    result = run(*args)
    seconds = time.perf_counter() - started
    peak = peak_bytes("cpu") or before
    return seconds, max(peak - before, 0) / 2**20, result


@torch.inference_mode()
def greedy_steps(model: Seq2SeqTransformer, src: torch.Tensor, steps: int) -> tuple[int, float]:
    """Self-attention K/V elements held at the end, and seconds of the last 128 steps."""
    encoded = model.encode(src)
    cache = model.new_cache(encoded, steps)
    token = torch.full((1, 1), BOS, dtype=torch.long)
    last_started = time.perf_counter()
    for step in range(steps):
        if step == steps - 128:
            last_started = time.perf_counter()
        token = model.decode(token, encoded, cache=cache)[:, -1:].argmax(-1)
    return cache.self_attention_elements(), time.perf_counter() - last_started


@torch.inference_mode()
def one_pass(model: Seq2SeqTransformer, src: torch.Tensor, positions: int) -> None:
    tgt = torch.full((1, positions), MASK, dtype=torch.long)
    model.decode(tgt, model.encode(src), causal=False, tgt_mask=torch.ones_like(tgt, dtype=torch.bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/long_inputs")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    max_len = max(args.lengths) + 1
    rows = []
    for label, window in (("full", 0), (f"window {args.window}", args.window)):
        torch.manual_seed(0)
        config = TransformerConfig.from_preset("tiny", max_len=max_len, dropout=0.0,
                                               encoder_window=window, decoder_window=window)
        model = Seq2SeqTransformer(config).eval()
        for n in args.lengths:
            short_src = torch.randint(6, config.vocab_size, (1, 128))
            greedy_s, greedy_mib, (cache_elements, last_s) = measure(greedy_steps, model, short_src, n)
            src = torch.randint(6, config.vocab_size, (1, n))
            pass_s, pass_mib, _ = measure(one_pass, model, src, n)
            row = {"attention": label, "tokens": n, "greedy_ms_per_token": round(1000 * greedy_s / n, 3),
                   "greedy_last_128_ms_per_token": round(1000 * last_s / min(n, 128), 3),
                   "greedy_s": round(greedy_s, 2), "greedy_peak_mib": round(greedy_mib),
                   "cache_mib": round(cache_elements * 4 / 2**20, 2),
                   "one_pass_s": round(pass_s, 3), "one_pass_peak_mib": round(pass_mib)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_inputs.json").write_text(json.dumps({"window": args.window, "threads": args.threads,
                                                      "rows": rows}, indent=2))
    columns = ["attention", "tokens", "greedy_ms_per_token", "greedy_last_128_ms_per_token",
               "greedy_peak_mib", "cache_mib",
               "one_pass_s", "one_pass_peak_mib"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    plot(rows, out)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for label in dict.fromkeys(r["attention"] for r in rows):
        mine = [r for r in rows if r["attention"] == label]
        tokens = [r["tokens"] for r in mine]
        axes[0].plot(tokens, [r["greedy_last_128_ms_per_token"] for r in mine], marker="o", label=label)
        axes[1].plot(tokens, [r["cache_mib"] for r in mine], marker="o", label=label)
        axes[2].plot(tokens, [r["one_pass_s"] for r in mine], marker="o", label=label)
    titles = ("greedy: ms per token (last 128 steps)", "greedy: self-attention KV cache (MiB)", "one pass: seconds")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    for suffix in ("png", "svg"):
        figure.savefig(out / f"long_inputs.{suffix}")


if __name__ == "__main__":
    main()
