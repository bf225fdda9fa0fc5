"""The README's and the docs pages' code works: every Python block runs (in order, one
namespace, with the checkpoints it names standing in as the test suite's trained reversal
models), and every `nargen` command they show answers `--help`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nargen.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
"""The README first (its blocks set up the namespace), then every docs page."""


def blocks(language: str) -> list[str]:
    return [block for page in PAGES
            for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]


def commands() -> list[list[str]]:
    """``nargen SUBCOMMAND [WHAT]`` for every command line in the pages' bash blocks."""
    found = set()
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|", line):
                words = part.split()
                if words[:1] == ["nargen"] and len(words) > 1 and not words[1].startswith("-"):
                    sub = words[1:3] if words[1] == "bench" else words[1:2]
                    found.add(tuple(sub))
    return [list(c) for c in sorted(found)]


def test_the_readme_shows_every_command():
    shown = {c[0] for c in commands()}
    assert {"fit", "translate", "evaluate", "distill", "diagnose", "average", "download", "bench"} <= shown


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_readme_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: nargen" in capsys.readouterr().out


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(
    trained_run, trained_cmlm, trained_nat, trained_insertion, trained_ctc, trained_dag, trained_latent,
    tmp_path, monkeypatch, capsys,
):
    stand_ins = {
        "ar_tiny": trained_run / "checkpoints" / "best.ckpt",
        "cmlm_tiny_distilled": trained_cmlm, "nat_tiny_distilled": trained_nat,
        "insertion_tree_tiny_distilled": trained_insertion, "ctc_glat_tiny_distilled": trained_ctc,
        "dag_tiny": trained_dag, "latent_c2_tiny_distilled": trained_latent,
    }
    code = blocks("python")
    assert len(code) >= 5
    named = set(re.findall(r"runs/([\w.-]+)/checkpoints/best\.ckpt", "".join(code)))
    assert named <= set(stand_ins), f"no stand-in for {named - set(stand_ins)}"
    for name in named:
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoints" / "best.ckpt").symlink_to(stand_ins[name])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(code):
        exec(compile(block, f"documentation python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    for family in ("autoregressive", "nat", "cmlm", "insertion", "ctc", "dag", "latent"):
        assert f"{family}:" in printed  # the per-family loop reached every family
