"""Sequence-level knowledge distillation: translate a corpus with a teacher, resumably."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from nargen.data.corpora import find_split_file, read_split
from nargen.data.corpus import CorpusError, read_lines
from nargen.evaluation import score
from nargen.models.base import Seq2SeqModule

PROGRESS = "distill-progress.json"
METADATA = "distill.json"


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def distill(
    teacher: Seq2SeqModule,
    teacher_path: str,
    root: str | Path,
    out: str | Path,
    *,
    src_lang: str,
    tgt_lang: str,
    split: str = "train",
    copy_splits: tuple[str, ...] = ("val", "test_2016_flickr"),
    chunk_lines: int = 2000,
    log: Any = print,
    **options: Any,
) -> Path:
    """Write ``out/{split}.{src_lang}`` (the source, copied) and ``out/{split}.{tgt_lang}``
    (the teacher's translations, line for line), copy ``copy_splits`` unchanged, and record
    the teacher, its decoding settings and its validation BLEU in ``out/distill.json``.

    Work is done in chunks of ``chunk_lines``; after each chunk the output is synced and
    its byte size recorded, so a killed run continues where it stopped without losing or
    repeating a line. Returns the translated target file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(root)
    source_file = find_split_file(root, split, src_lang)
    sources = read_lines(source_file)
    target = out / f"{split}.{tgt_lang}"
    partial = out / f"{split}.{tgt_lang}.partial"
    progress_path = out / PROGRESS
    settings = {"split": split, "lines": len(sources), "options": _plain(options)}
    done, offset = 0, 0
    if target.exists() and not partial.exists():
        log(f"{target}: already complete")
    else:
        if progress_path.exists() and partial.exists():
            progress = json.loads(progress_path.read_text())
            if progress["settings"] != settings:
                raise CorpusError(
                    f"{out}: holds an unfinished distillation with other settings "
                    f"({progress['settings']}); use another --out or delete it"
                )
            done, offset = progress["lines_done"], progress["bytes"]
            log(f"{out}: resuming after line {done} of {len(sources)}")
        with open(partial, "ab") as handle:
            handle.truncate(offset)  # drop anything written after the last recorded chunk
            while done < len(sources):
                chunk = sources[done : done + chunk_lines]
                texts = teacher.translate(chunk, **options).texts
                handle.write("".join(t.replace("\n", " ") + "\n" for t in texts).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                done += len(chunk)
                _write_json(progress_path, {"settings": settings, "lines_done": done, "bytes": handle.tell()})
                log(f"{done}/{len(sources)} lines")
        os.replace(partial, target)
        progress_path.unlink(missing_ok=True)
    shutil.copyfile(source_file, out / source_file.name)
    for other in copy_splits:
        for lang in (src_lang, tgt_lang):
            path = find_split_file(root, other, lang)
            shutil.copyfile(path, out / path.name)
    valid = read_split(root, copy_splits[0], src_lang, tgt_lang) if copy_splits else None
    metadata = {
        "teacher": str(teacher_path),
        "teacher_family": teacher.family,
        "decoding": _plain(options),
        "source": {"root": str(root), "split": split, "pair": f"{src_lang}-{tgt_lang}"},
        "teacher_data_signature": {k: v for k, v in teacher.data_signature.items() if k != "config"},
    }
    if valid is not None:
        hyps = teacher.translate(valid.source, **options).texts
        metadata["teacher_validation"] = {"split": copy_splits[0], **score(hyps, valid.target)}
    _write_json(out / METADATA, metadata)
    return target


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if isinstance(v, (int, float, str))}
