"""Families register themselves: one defined in a test module (``toy_family``), outside
the package, is trained, decoded, evaluated and benchmarked through the command line
like nargen's own, and its checkpoint names the module that defines it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import reversal_overrides

from nargen.cli.main import main
from nargen.models import FAMILIES, Seq2SeqModule, family_class, read_checkpoint, register_family

TESTS = Path(__file__).parent


def test_a_family_from_a_test_module_runs_through_every_command(reversal_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = reversal_overrides(reversal_root, run, tmp_path / "c", 150, "--family", "toy_family:toy",
                              "--model.absolute_positions", "true", "--optim.lr", "5e-3")
    assert main(["fit", *args]) == 0
    ckpt = run / "checkpoints" / "best.ckpt"
    meta = read_checkpoint(ckpt)["nargen"]
    assert (meta["family"], meta["family_module"]) == ("toy", "toy_family")

    # its own decoder options are listed with the others in fit's help
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "toy: compile=False, length_offset=0" in " ".join(capsys.readouterr().out.split())

    # a fresh process imports the family's module from what the checkpoint records
    src = reversal_root / "test.src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # translate's help, given the checkpoint, lists the family's own option with its doc
    proc = subprocess.run([sys.executable, "-m", "nargen.cli.main", "translate", "--ckpt", str(ckpt), "--help"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--length_offset" in proc.stdout
    assert "Tokens added to the source's length" in " ".join(proc.stdout.split())
    outputs = {}
    for offset, flags in ((0, ["--decode_options", "{length_offset: 0}"]), (2, ["--length_offset", "2"])):
        out = tmp_path / f"out{offset}.txt"
        proc = subprocess.run(
            [sys.executable, "-m", "nargen.cli.main", "translate", "--ckpt", str(ckpt), "-i", str(src),
             "-o", str(out), "--device", "cpu", *flags],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outputs[offset] = out.read_text(encoding="utf-8").splitlines()[:20]
    assert len(outputs[0]) == 20
    # two more output tokens a line: the option reached the family's decoder
    words = [(len(a.split()), len(b.split())) for a, b in zip(outputs[0], outputs[2])]
    assert sum(b for _, b in words) > sum(a for a, _ in words)

    # trained well enough that its outputs are the reversed sources, mostly
    assert main(["evaluate", "--ckpt", str(ckpt), "--src", str(src), "--ref", str(reversal_root / "test.tgt"),
                 "--json", "--latency_sentences", "5"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["family"] == "toy" and record["bleu"] > 30, record["bleu"]

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "corpus": "reversal", "root": str(reversal_root), "src_lang": "src", "tgt_lang": "tgt",
        "split": "test", "latency_sentences": 5,
        "systems": [{"name": "toy", "ckpt": str(ckpt)},
                    {"name": "toy, 1 longer", "ckpt": str(ckpt), "options": {"length_offset": 1}}],
    }))
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(tmp_path / "bench")]) == 0
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [r["system"] for r in bench["records"]] == ["toy", "toy, 1 longer"]
    assert bench["records"][0]["bleu"] == record["bleu"]


def test_a_family_name_is_taken_once_and_unknown_ones_are_named():
    class Impostor(Seq2SeqModule):
        family = "cmlm"

    with pytest.raises(ValueError, match="already registered"):
        register_family(Impostor)
    assert FAMILIES["cmlm"] is not Impostor
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        family_class("nope")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        family_class("no_such_module:nope")
