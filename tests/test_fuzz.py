"""Property-based checks (hypothesis) on readers, tokenizer, decoders and translate."""

from __future__ import annotations

import gzip

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nargen.cli.main import main
from nargen.data import CorpusError, read_lines, read_parallel
from nargen.decoding import beam_search, greedy
from nargen.models import load_module

from conftest import WORDS
from table_model import VOCAB, TableModel

# One line of any text a UTF-8 file can hold (no lone surrogates) and no newline; a final
# "\r" is a CRLF ending and is dropped.
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=300).filter(
    lambda s: not s.endswith("\r")
)
# Any Python string without a newline, lone surrogates included: what the API may be handed.
api_text = st.text(st.characters(exclude_characters="\n"), max_size=300)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(lines=st.lists(line_text, max_size=20), gz=st.booleans(), crlf=st.booleans())
def test_reader_round_trips_any_unicode(tmp_path_factory, lines, gz, crlf):
    path = tmp_path_factory.mktemp("fuzz") / ("x.gz" if gz else "x")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = "x" + lines[0]  # a leading BOM belongs to the file, not the text
    data = "".join(line + ("\r\n" if crlf else "\n") for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert read_lines(path) == lines


@FUZZ
@given(lines=st.lists(line_text, min_size=1, max_size=10), bad=st.integers(0, 9),
       junk=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
def test_reader_names_the_first_bad_line(tmp_path_factory, lines, bad, junk):
    bad = bad % len(lines)
    encoded = [line.encode() for line in lines]
    encoded[bad] += junk
    path = tmp_path_factory.mktemp("fuzz") / "bad.txt"
    path.write_bytes(b"\n".join(encoded) + b"\n")
    with pytest.raises(CorpusError, match=rf"bad\.txt:{bad + 1}: not valid UTF-8"):
        read_lines(path)


@FUZZ
@given(n=st.integers(0, 30), m=st.integers(0, 30))
def test_parallel_counts_must_match(tmp_path_factory, n, m):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a.de").write_text("x\n" * n)
    (root / "a.en").write_text("y\n" * m)
    if n == m:
        assert len(read_parallel(root / "a.de", root / "a.en")) == n
    else:
        with pytest.raises(CorpusError, match=f"a.de has {n} lines.*a.en has {m} lines"):
            read_parallel(root / "a.de", root / "a.en")


@FUZZ
@given(words=st.lists(st.sampled_from(WORDS), max_size=40))
def test_tokenizer_round_trips_in_vocabulary_text(tokenizer, words):
    text = " ".join(words)
    assert tokenizer.decode(tokenizer.encode([text])) == [text]


@FUZZ
@given(text=api_text)
def test_tokenizer_accepts_any_unicode(tokenizer, text):
    ids = tokenizer.encode([text])[0]
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    (out,) = tokenizer.decode([ids])
    assert "\n" not in out


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 63), min_size=1, max_size=6), beam=st.integers(1, 3))
def test_decoders_handle_any_length_mix(lengths, beam):
    """Sources of 0..max_len-1 tokens (+EOS), mixed in one batch: each row decodes as it
    would alone, stays within its cap, and holds no padding before its end. (The table
    model's scores are exact per row, so this checks the decoders' own bookkeeping; the
    real models' batch invariance is checked on trained models.)"""
    model = TableModel(seed=sum(lengths), eos_bias=-1.0)
    gen = torch.Generator().manual_seed(sum(lengths))
    rows = [torch.cat([torch.randint(3, VOCAB, (n,), generator=gen), torch.tensor([2])]) for n in lengths]
    src = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    run = (lambda s: greedy(model, s, max_len=64)) if beam == 1 else (
        lambda s: beam_search(model, s, beam=beam, max_len=64))
    together = run(src)
    alone = [run(r[None]).as_lists(0)[0] for r in rows]
    assert together.as_lists(0) == alone
    for row, n in zip(together.as_lists(0), lengths):
        assert len(row) <= min(63, int((n + 1) * 1.5) + 10)
        assert 0 not in row and 2 not in row


@pytest.fixture(scope="module")
def trained_module(trained_run):
    return load_module(trained_run / "checkpoints" / "best.ckpt")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(api_text, max_size=12))
@example(lines=["\ud800", "ka \udcff lo"])  # lone surrogates: no UTF-8 for SentencePiece
def test_translate_gives_one_line_per_input(trained_module, lines):
    result = trained_module.translate(lines)
    assert len(result.texts) == len(lines)
    assert all("\n" not in t for t in result.texts)
    assert all(t == "" for t, s in zip(result.texts, lines) if s == "")


def test_fit_fails_before_training_on_a_misaligned_corpus(reversal_root, tmp_path, capsys):
    from conftest import reversal_overrides

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("val", "test"):
        for lang in ("src", "tgt"):
            (bad / f"{split}.{lang}").write_bytes((reversal_root / f"{split}.{lang}").read_bytes())
    (bad / "train.src").write_text("ka lo\nmi nu\npe ro\n")
    (bad / "train.tgt").write_text("lo ka\nnu mi\n")
    run_dir = tmp_path / "run"
    code = main(["fit", *reversal_overrides(bad, run_dir, tmp_path / "c", 10)])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.src has 3 lines" in err and "train.tgt has 2 lines" in err
    assert not (run_dir / "checkpoints").exists()
    (bad / "train.tgt").write_bytes(b"lo ka\nnu \xff mi\nro pe\n")
    assert main(["fit", *reversal_overrides(bad, run_dir, tmp_path / "c", 10)]) == 2
    assert "train.tgt:2: not valid UTF-8" in capsys.readouterr().err
