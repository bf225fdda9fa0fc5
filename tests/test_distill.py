"""`nargen distill`: resumable, line-aligned teacher translations."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from nargen.cli.main import main
from nargen.data import read_split


def distill_args(ckpt, root, out, *extra):
    return ["distill", "--ckpt", str(ckpt), "--corpus", "reversal", "--root", str(root),
            "--pair", "src-tgt", "--split", "train", "--copy_splits", "val", "test",
            "--out", str(out), "--chunk_lines", "150", *extra]


def test_killed_distill_resumes_to_the_uninterrupted_output(trained_run, reversal_root, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert main(distill_args(ckpt, reversal_root, tmp_path / "whole", "--beam", "2")) == 0
    whole = (tmp_path / "whole" / "train.tgt").read_text().split("\n")

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nargen.cli.main",
                             *distill_args(ckpt, reversal_root, out, "--beam", "2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "distill-progress.json"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["lines_done"] >= 450:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["lines_done"]
    assert 0 < done < 3000
    with open(out / "train.tgt.partial", "ab") as handle:
        handle.write(b"half a line written when the kill came")

    assert main(distill_args(ckpt, reversal_root, out, "--beam", "2")) == 0
    assert f"resuming after line {done}" in capsys.readouterr().err
    assert (out / "train.tgt").read_text().split("\n") == whole
    assert not (out / "train.tgt.partial").exists() and not progress.exists()

    # the result reads like any corpus, aligned with its source
    pair = read_split(out, "train", "src", "tgt")
    assert len(pair) == 3000
    assert sum(t == " ".join(reversed(s.split())) for s, t in zip(pair.source, pair.target)) > 2700
    meta = json.loads((out / "distill.json").read_text())
    assert meta["decoding"] == {"beam": 2} and meta["teacher_family"] == "autoregressive"
    assert meta["teacher_validation"]["bleu"] > 80 and "tok:13a" in meta["teacher_validation"]["bleu_signature"]
    assert read_split(out, "test", "src", "tgt").target == read_split(reversal_root, "test", "src", "tgt").target


def test_distill_refuses_to_mix_settings(trained_run, reversal_root, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "d"
    out.mkdir()
    (out / "train.tgt.partial").write_text("")
    (out / "distill-progress.json").write_text(json.dumps(
        {"settings": {"split": "train", "lines": 3000, "options": {"beam": 4}}, "lines_done": 0, "bytes": 0}))
    assert main(distill_args(ckpt, reversal_root, out, "--beam", "2")) == 2
    assert "unfinished distillation with other settings" in capsys.readouterr().err
