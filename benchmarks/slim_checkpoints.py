"""Move drafters to another machine (a GPU machine, to measure there) in few bytes: a
checkpoint of a frozen-target family (blockwise heads, the feature-level drafter, the
block drafter on the target's encoder) holds the whole target model, which the
target's own checkpoint already holds, and a training checkpoint holds optimizer state
that decoding never reads.

    python benchmarks/slim_checkpoints.py strip TARGET.ckpt DRAFTER.ckpt ... --out DIR
        each DRAFTER.ckpt as DIR/<its path>, without training state, and without the
        target's weights where they are TARGET.ckpt's
    python benchmarks/slim_checkpoints.py restore TARGET.ckpt DIR
        every checkpoint under DIR written back to <its path>, the target's weights
        taken from TARGET.ckpt where they were stripped (checked against the digest
        strip recorded)
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

PREFIX = "model."


def _target_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith(PREFIX)}


def _digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()


TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "nargen_resume")


def strip(target: Path, drafters: list[Path], out: Path) -> None:
    shared = _target_weights(target)
    digest = _digest(shared)
    for path in drafters:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in TRAINING_STATE:
            state.pop(key, None)
        weights = state["state_dict"]
        own = {k: v for k, v in weights.items() if k.startswith(PREFIX)}
        frozen_target = own.keys() == shared.keys() and all(torch.equal(own[k], shared[k]) for k in own)
        if frozen_target:
            state["state_dict"] = {k: v for k, v in weights.items() if not k.startswith(PREFIX)}
        state["stripped_target"] = digest if frozen_target else None
        dest = out / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, dest)
        kind = "target stripped" if frozen_target else "a model of its own"
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB -> {dest} {dest.stat().st_size / 2**20:.1f} MiB ({kind})")


def restore(target: Path, folder: Path) -> None:
    shared = _target_weights(target)
    digest = _digest(shared)
    for stripped in sorted(folder.rglob("*.ckpt")):
        state = torch.load(stripped, map_location="cpu", weights_only=True)
        recorded = state.pop("stripped_target")
        if recorded is not None:
            if recorded != digest:
                raise SystemExit(f"{stripped}: stripped from another target than {target}")
            state["state_dict"] = {**shared, **state["state_dict"]}
        dest = stripped.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, dest)
        print(f"{stripped} -> {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strip")
    s.add_argument("target", type=Path)
    s.add_argument("drafters", type=Path, nargs="+")
    s.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("restore")
    r.add_argument("target", type=Path)
    r.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "strip":
        strip(args.target, args.drafters, args.out)
    else:
        restore(args.target, args.folder)


if __name__ == "__main__":
    main()
