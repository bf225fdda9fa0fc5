"""Profile fairseq (the peer toolkit) the way ``nargen bench train --profile-steps`` and
``benchmarks/profile_decode.py`` profile nargen, with the same operator groups.

Run it with the peer's Python (fairseq installed there) and this repository on the path;
the arguments after the mode are fairseq-train's or fairseq-generate's own:

    PYTHONPATH=. PEER/venv/bin/python benchmarks/profile_fairseq.py train --skip 20 --steps 10 \\
        -- PEER/data/bin --arch transformer ... --max-update 40
    PYTHONPATH=. PEER/venv/bin/python benchmarks/profile_fairseq.py generate --skip 10 --steps 50 \\
        -- PEER/data/bin --path ckpt.pt --batch-size 1 --beam 1 ...

``train`` profiles whole updates ``skip+1 .. skip+steps`` (batch fetch, forward, loss,
backward, clipping, optimizer, the trainer's own work); ``generate`` profiles calls
``skip+1 .. skip+steps`` of the sequence generator (one batch each). The Markdown table
goes to stderr and, with ``--json FILE``, rows to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from nargen.bench.profiling import FAIRSEQ_REGIONS, REGION, add_counts, attention_elements, label_regions, summarize


class Window:
    """Starts the profiler after call ``skip`` of a wrapped function and stops it after
    call ``skip + steps``."""

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps, self.calls = skip, steps, 0
        self.profiler: torch.profiler.profile | None = None
        self.started = self.wall = 0.0
        self.on_start = lambda: None
        self.tokens = 0
        self.attention: dict[str, float] = {}

    def after_call(self) -> None:
        self.calls += 1
        if self.calls == self.skip:
            self.on_start()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.started = time.perf_counter()
        elif self.calls == self.skip + self.steps and self.profiler is not None:
            self.wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)

    def wrap(self, fn):  # noqa: ANN001, ANN201
        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003
            out = fn(*args, **kwargs)
            self.after_call()
            return out

        return wrapped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["train", "generate"])
    parser.add_argument("--skip", type=int, default=20, help="calls run before the profile")
    parser.add_argument("--steps", type=int, default=10, help="calls profiled")
    parser.add_argument("--json", help="write the rows here")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    window = Window(args.skip, args.steps)
    if args.mode == "train":
        from fairseq import trainer as fairseq_trainer
        from fairseq_cli import train as entry

        cls = fairseq_trainer.Trainer
        original = cls.train_step

        def train_step(self, samples, *a, **k):  # noqa: ANN001, ANN002, ANN003
            if window.skip <= window.calls < window.skip + window.steps:
                window.tokens += sum(int(s["ntokens"]) for s in samples if s)
                for s in samples:
                    if s:  # fairseq's decoder input: EOS + target, as long as the target
                        add_counts(window.attention, attention_elements(
                            tuple(s["net_input"]["src_tokens"].shape), tuple(s["target"].shape)))
            if window.calls == window.skip - 1 and not hasattr(self, "_regions"):
                label_regions(self.model, FAIRSEQ_REGIONS)
                label_regions(self.criterion, [(r"^$", "step")])
                self._regions = True
            return original(self, samples, *a, **k)

        cls.train_step = window.wrap(train_step)
        sys.argv = ["fairseq-train", *rest]
    else:
        from fairseq import sequence_generator
        from fairseq_cli import generate as entry

        cls = sequence_generator.SequenceGenerator
        original = cls._generate

        def generate(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
            if window.calls == window.skip - 1 and not hasattr(self, "_regions"):
                for model in self.model.models:
                    label_regions(model, FAIRSEQ_REGIONS)
                self._regions = True
            with torch.autograd.profiler.record_function(REGION + "step"):
                return original(self, *a, **k)

        cls._generate = window.wrap(generate)
        sys.argv = ["fairseq-generate", *rest]
    entry.cli_main()
    if window.profiler is None or not window.wall:
        print(f"fewer than {args.skip + args.steps} calls ran: nothing profiled", file=sys.stderr)
        return 1
    profile = summarize(window.profiler.events(), args.steps, window.wall)
    profile.tokens = window.tokens / args.steps
    profile.attention = {k: v / args.steps for k, v in window.attention.items()}
    print(profile.markdown(f"fairseq {args.mode}", unit="update" if args.mode == "train" else "call"),
          file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms_per_step": profile.wall_ms, "steps": args.steps,
                       "target_tokens_per_step": profile.tokens,
                       "attention_elements_per_step": profile.attention, "groups": profile.rows()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
