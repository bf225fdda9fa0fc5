"""Input lines in chunks as they arrive: a chunk ends at ``max_lines`` lines or when no
more input is ready, so a slow writer sees each output soon after its input line,
and a fast one gets batches. Lines are decoded as UTF-8 with errors naming the line."""

from __future__ import annotations

import os
import select
from typing import BinaryIO, Iterator

from nargen.data.corpus import decode_lines


def _ready(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # not selectable (e.g. some pipes on other systems)
        return True


def line_chunks(stream: BinaryIO, max_lines: int, name: str) -> Iterator[list[str]]:
    """Yield lists of at most ``max_lines`` decoded lines from ``stream`` (one without a
    file descriptor, e.g. in memory, is read whole first)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        lines = decode_lines(stream.read(), name)
        for start in range(0, len(lines), max_lines):
            yield lines[start : start + max_lines]
        return
    buffer = b""
    pending: list[bytes] = []
    line_number = 0
    eof = False
    while True:
        while b"\n" in buffer and len(pending) < max_lines:
            line, buffer = buffer.split(b"\n", 1)
            pending.append(line)
        if pending and (eof or len(pending) >= max_lines or not _ready(fd)):
            lines = decode_lines(b"".join(p + b"\n" for p in pending), name, line_number + 1)
            line_number += len(pending)
            pending = []
            yield lines
            continue
        if eof:
            if buffer:  # a last line without its newline
                pending.append(buffer)
                buffer = b""
                continue
            return
        data = os.read(fd, 1 << 16)
        if not data:
            eof = True
        buffer += data
