"""Accuracy logs as MLPerf's submission takes them: truncated, with the original's sha256 beside them.

Facts from mlcommons/inference ``tools/submission/truncate_accuracy_log.py``
(tag v2.0, commit 33894a19c4af6207f7cfdda75f84570f04836de5): the copy keeps
the first and last 4096 characters joined by ``"\\n\\n...\\n\\n"``, and the
sha256 of the ORIGINAL file is appended to the ``accuracy.txt`` beside it as
``hash=<hex>`` (for TEST01's log too, creating that accuracy.txt); the checker
takes a log under 10 KiB whose ``accuracy.txt`` has a hash as already
truncated. Each log is streamed once, never copied whole or held in memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ground.files import write_text_atomic

VIEWABLE_CHARS = 4096
MAX_TRUNCATED_BYTES = 10 * 1024
ELLIPSIS = "\n\n...\n\n"


@dataclass
class Truncated:
    source: Path
    target: Path
    original_bytes: int
    sha256: str


def hash_head_tail(path: Path, keep: int = VIEWABLE_CHARS) -> tuple[str, int, bytes, bytes]:
    """(sha256 hex, size in bytes, first ``keep`` bytes, last ``keep`` bytes) of ``path``, in one streaming pass."""
    h = hashlib.sha256()
    head, tail, size = b"", b"", 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
            if len(head) < keep:
                head += block[:keep - len(head)]
            tail = (tail + block)[-keep:]
    return h.hexdigest(), size, head, tail


def truncated_text(head: bytes, tail: bytes, size: int, keep: int = VIEWABLE_CHARS) -> bytes:
    """The truncated log: unchanged when shorter than ``keep`` bytes, else head + ``ELLIPSIS`` + tail."""
    if size < keep:
        return head
    return head + ELLIPSIS.encode() + tail


def write_truncated_log(source: Path, target: Path, accuracy_txt: Path) -> Truncated:
    """Write the truncated copy of ``source`` to ``target`` and append ``hash=`` to ``accuracy_txt``.

    ``accuracy_txt`` is the submission copy's accuracy.txt (created holding only the hash if missing).
    """
    digest, size, head, tail = hash_head_tail(source)
    target.write_bytes(truncated_text(head, tail, size))
    previous = accuracy_txt.read_text() if accuracy_txt.is_file() else ""
    text = previous + ("\n" if previous else "") + f"hash={digest}\n"
    write_text_atomic(accuracy_txt, text)
    return Truncated(source, target, size, digest)
