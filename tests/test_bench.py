"""`nargen bench systems`: one record per system, speed-ups, table and plot."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import sacrebleu
import torch
import yaml

from nargen.cli.main import main
from nargen.bench.report import pareto_front
from nargen.core import TransformerConfig
from nargen.data import read_split
from nargen.models import NATModule, load_module


def write_spec(path, root, systems, **extra):
    spec = {"corpus": "reversal", "root": str(root), "src_lang": "src", "tgt_lang": "tgt",
            "split": "test", "latency_sentences": 6, "systems": systems, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def untrained_nat_checkpoint(path, tokenizer):
    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size)
    module = NATModule(cfg, tokenizer)
    torch.save({"nargen": module.metadata(), "state_dict": module.state_dict()}, path)
    return path


def test_bench_measures_every_system_and_writes_table_and_plot(trained_run, reversal_root, tmp_path, capsys):
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    nat = str(untrained_nat_checkpoint(tmp_path / "nat.ckpt", load_module(ar).tokenizer))
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "AR greedy", "ckpt": ar, "options": {"beam": 1}, "training_data": "raw"},
        {"name": "AR beam 2", "ckpt": ar, "options": {"beam": 2}},
        {"name": "NAT k=2 + rerank", "ckpt": nat, "options": {"length_beam": 2}, "rerank_ckpt": ar},
    ])
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    records = {r["system"]: r for r in result["records"]}
    assert list(records) == ["AR greedy", "AR beam 2", "NAT k=2 + rerank"]

    greedy = records["AR greedy"]
    test = read_split(reversal_root, "test", "src", "tgt")
    hyps = load_module(ar).translate(test.source, beam=1).texts
    assert greedy["bleu"] == round(sacrebleu.corpus_bleu(hyps, [test.target]).score, 2)
    assert greedy["batch1_sentences"] == 6 and greedy["sentences"] == 100
    # mean output length in SentencePiece tokens, as the tokenizer reads the outputs back
    tokens = load_module(ar).tokenizer.encode(hyps)
    assert greedy["mean_output_tokens"] == round(sum(map(len, tokens)) / len(tokens), 2)
    # the baselines: the AR rows decoding with beam 1 and beam > 1; each is 1.0x of itself,
    # and a system is faster than a baseline exactly when its time is shorter
    beam_rec = records["AR beam 2"]
    assert {r["greedy_baseline"] for r in records.values()} == {"AR greedy"}
    assert {r["beam_baseline"] for r in records.values()} == {"AR beam 2"}
    assert greedy["speedup_batch1_vs_greedy"] == beam_rec["speedup_batch1_vs_beam"] == 1.0
    for r in records.values():
        for label, base in (("greedy", greedy), ("beam", beam_rec)):
            if abs(r["batch1_ms_mean"] - base["batch1_ms_mean"]) > 0.01 * base["batch1_ms_mean"]:
                assert (r[f"speedup_batch1_vs_{label}"] > 1) == (r["batch1_ms_mean"] < base["batch1_ms_mean"])
            if abs(r["sentences_per_s"] - base["sentences_per_s"]) > 0.01 * base["sentences_per_s"]:
                assert (r[f"speedup_batched_vs_{label}"] > 1) == (r["sentences_per_s"] > base["sentences_per_s"])
    # The reranker is one more sequential pass inside the NAT system.
    assert records["NAT k=2 + rerank"]["mean_passes_per_sentence"] == 2.0
    assert records["NAT k=2 + rerank"]["rerank_ckpt"] == ar

    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| AR greedy (greedy baseline) |" in table and "| AR beam 2 (beam baseline) |" in table
    assert "| NAT k=2 + rerank |" in table
    assert greedy["bleu_signature"] in table and greedy["bleu_signature"] in capsys.readouterr().out
    for name in ("bench", "latency"):  # the frontier and latency-by-length plots
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
        ET.fromstring((tmp_path / "out" / f"{name}.svg").read_text())  # well-formed SVG
    # batch-1 latency split by output length: every timed sentence in one bucket
    assert sum(row["sentences"] for row in greedy["latency_by_length"]) == 6
    assert greedy["peak_memory_mb"] > 0
    assert "by output length" in table


def test_bench_without_batch_one_timing_still_writes_its_table(trained_run, reversal_root, tmp_path):
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "AR greedy", "ckpt": ar}, {"name": "AR beam 2", "ckpt": ar, "options": {"beam": 2}},
    ])
    out = tmp_path / "out"
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--latency_sentences", "0"]) == 0
    (greedy, beam) = json.loads((out / "bench.json").read_text())["records"]
    assert "batch1_ms_mean" not in greedy and "speedup_batch1_vs_greedy" not in beam
    assert greedy["speedup_batched_vs_greedy"] == beam["speedup_batched_vs_beam"] == 1.0
    assert "| AR beam 2 (beam baseline) |" in (out / "bench.md").read_text()


def test_bench_baselines_follow_the_options_used_and_skip_drafted_systems(trained_run, trained_cmlm,
                                                                            reversal_root, tmp_path):
    """The baselines are picked by the beam each system decodes with (a checkpoint's own
    decode options count), and a speculative or sampling system is never the greedy baseline."""
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    module = load_module(ar)
    module.decode_config.options = {"beam": 2}  # a checkpoint that decodes with beam 2 unless told
    beam_by_default = tmp_path / "beam_by_default.ckpt"
    torch.save({"nargen": module.metadata(), "state_dict": module.state_dict()}, beam_by_default)
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "AR speculative", "ckpt": ar, "options": {"beam": 1, "block": 3}, "draft_ckpt": str(trained_cmlm)},
        {"name": "AR sampled", "ckpt": ar, "options": {"beam": 1, "sampling": True, "seed": 1}},
        {"name": "AR own beam", "ckpt": str(beam_by_default)},
        {"name": "AR greedy", "ckpt": str(beam_by_default), "options": {"beam": 1}},
    ])
    out = tmp_path / "out"
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--latency_sentences", "0"]) == 0
    records = {r["system"]: r for r in json.loads((out / "bench.json").read_text())["records"]}
    assert records["AR own beam"]["decode_options"]["beam"] == 2
    assert {r["greedy_baseline"] for r in records.values()} == {"AR greedy"}
    assert {r["beam_baseline"] for r in records.values()} == {"AR own beam"}
    # speculative decoding of the baseline's model gives its greedy output, every sentence
    assert records["AR speculative"]["differ_from_greedy"] == 0
    assert "differ_from_greedy" not in records["AR sampled"]


def test_bench_counts_the_speculative_outputs_that_differ_from_greedy():
    from nargen.bench.systems import BenchSpec, count_greedy_differences
    records = [
        {"system": "greedy", "decode_options": {"beam": 1}, "draft_ckpt": None, "speed_baseline": True},
        {"system": "drafted", "decode_options": {"beam": 1}, "draft_ckpt": "d.ckpt", "draft_acceptance": 0.5},
        {"system": "beam", "decode_options": {"beam": 4}, "draft_ckpt": None, "speed_baseline": True},
    ]
    outputs = [["a b", "c", "d e"], ["a b", "c d", "d"], ["x", "c", "d e"]]
    count_greedy_differences(records, outputs, BenchSpec())
    assert records[1]["differ_from_greedy"] == 2
    assert "differ_from_greedy" not in records[0] and "differ_from_greedy" not in records[2]


def test_bench_names_the_system_whose_option_does_not_apply(trained_run, reversal_root, tmp_path, capsys):
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "ok", "ckpt": ar},
        {"name": "wrong", "ckpt": ar, "options": {"iterations": 4}},
    ])
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "systems[1] (wrong): iterations does not apply" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_checkpoint_is_named_or_left_out_on_request(trained_run, reversal_root, tmp_path, capsys):
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    absent = str(tmp_path / "not_trained" / "best.ckpt")
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "AR greedy", "ckpt": ar}, {"name": "NAT k=2", "ckpt": absent},
        {"name": "AR greedy + draft", "ckpt": ar, "draft_ckpt": absent},
    ])
    out = tmp_path / "out"
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out)]) == 2
    assert f"systems[1] (NAT k=2): no checkpoint {absent}" in capsys.readouterr().err
    assert not out.exists()
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--skip_missing",
                 "--latency_sentences", "0"]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert [r["system"] for r in result["records"]] == ["AR greedy"]
    assert result["left_out"] == [{"system": "NAT k=2", "missing": [absent]},
                                  {"system": "AR greedy + draft", "missing": [absent]}]
    assert f"NAT k=2 ({absent})" in (out / "bench.md").read_text()


def test_systems_chosen_by_name_are_the_only_ones_measured(trained_run, reversal_root, tmp_path, capsys):
    ar = str(trained_run / "checkpoints" / "best.ckpt")
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [
        {"name": "AR greedy", "ckpt": ar}, {"name": "NAT k=2", "ckpt": str(tmp_path / "absent.ckpt")},
        {"name": "AR beam 2", "ckpt": ar, "options": {"beam": 2}},
    ])
    out = tmp_path / "out"
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--systems", "^AR",
                 "--latency_sentences", "0"]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert [r["system"] for r in result["records"]] == ["AR greedy", "AR beam 2"]
    assert "those matching '^AR'" in (out / "bench.md").read_text()
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--systems", "CTC"]) == 2
    assert "--systems: 'CTC' matches no system name" in capsys.readouterr().err
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(out), "--systems", "(AR"]) == 2
    assert "'(AR' is not a regular expression" in capsys.readouterr().err


def test_bench_spec_errors_name_the_key(reversal_root, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", reversal_root, [{"name": "a", "ckpt": "x", "beam": 4}])
    assert main(["bench", "systems", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "spec.yaml: systems[0]: Option 'beam' is not accepted" in capsys.readouterr().err


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(10.0, 20.0), (5.0, 15.0), (20.0, 25.0), (15.0, 18.0), (30.0, 24.0)]
    assert pareto_front(points) == [1, 0, 2]


def test_every_bench_spec_in_the_recipes_parses():
    from pathlib import Path

    from nargen.bench.systems import load_bench_spec

    specs = sorted(Path("recipes").glob("*/bench/*.yaml"))
    assert specs
    for path in specs:
        spec, systems = load_bench_spec(path)
        assert systems and all(s.ckpt for s in systems), path


def test_bench_train_counts_only_the_updates_after_the_warm_up(reversal_root, tmp_path):
    """The same seed gives the same batches, so the tokens counted after 2 warm-up
    updates of 5 are those of 5 updates less those of the first 2."""
    from conftest import reversal_config
    from nargen.bench.training import train_throughput

    config = reversal_config(reversal_root, tmp_path / "run", tmp_path / "c", 5)
    counted = {(w, n): train_throughput(config, n, w)["target_tokens"] for w, n in ((2, 3), (0, 5), (0, 2))}
    assert counted[(2, 3)] == counted[(0, 5)] - counted[(0, 2)] > 0
    assert not (tmp_path / "run").exists()  # a benchmark writes no run folder


def test_bench_train_profile_counts_the_attention_work_of_the_profiled_update(reversal_root, tmp_path):
    """One profiled update: its score elements are those of one padded batch, so the
    cross-attention count is the geometric mean of the two self-attention counts."""
    from conftest import reversal_config
    from nargen.bench.training import train_throughput

    config = reversal_config(reversal_root, tmp_path / "run", tmp_path / "c", 4)
    profile = train_throughput(config, 1, 1, profile_steps=1)["profile"]
    work = profile["attention_elements_per_step"]
    assert set(work) == {"encoder", "decoder", "cross"} and min(work.values()) > 0
    assert work["cross"] ** 2 == work["encoder"] * work["decoder"]
    assert "attention score elements per target token" in profile["markdown"]
