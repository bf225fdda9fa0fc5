"""Reading parallel text (plain or gzip UTF-8) with errors that name file and line."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A corpus file is missing, misaligned or not valid UTF-8."""


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` decompressed); see ``decode_lines``."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise CorpusError(f"{path}: cannot read ({err})") from err
    return decode_lines(raw, str(path))


def decode_lines(raw: bytes, name: str, first_line: int = 1) -> list[str]:
    r"""Split UTF-8 bytes into lines: ``\n`` ends a line, a trailing ``\r`` is dropped,
    a byte-order mark at the start of a file (``first_line`` 1) is dropped. A bad line
    raises ``CorpusError`` naming ``name`` and the 1-based line number (``raw`` starting
    at line ``first_line``)."""
    if first_line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:  # the common case in one call
        text = raw.decode("utf-8")
        if "\r" not in text:
            lines = text.split("\n")
            return lines[:-1] if lines[-1] == "" else lines
    except UnicodeDecodeError:
        pass
    chunks = raw.split(b"\n")
    if chunks[-1] == b"":
        chunks.pop()
    lines = []
    for number, chunk in enumerate(chunks, start=first_line):
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise CorpusError(
                f"{name}:{number}: not valid UTF-8 (byte {err.start}: {chunk[err.start:err.start + 4]!r})"
            ) from err
    return lines


@dataclass
class ParallelText:
    """Aligned source and target lines, with the files they came from."""

    source: list[str]
    target: list[str]
    source_path: Path
    target_path: Path

    def __len__(self) -> int:
        return len(self.source)


def read_parallel(source_path: str | Path, target_path: str | Path) -> ParallelText:
    """Read two aligned files; different line counts raise ``CorpusError`` naming both."""
    source, target = read_lines(source_path), read_lines(target_path)
    if len(source) != len(target):
        raise CorpusError(
            f"parallel files differ in length: {source_path} has {len(source)} lines, "
            f"{target_path} has {len(target)} lines"
        )
    return ParallelText(source, target, Path(source_path), Path(target_path))
