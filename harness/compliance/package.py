"""The submission copy of a results tree, with accuracy logs truncated the way MLPerf's checker expects.

    python run.py package RESULTS_DIR OUT_DIR

Rule (mlcommons/inference ``tools/submission/truncate_accuracy_log.py``):
an accuracy log of the submission keeps its first and last 4096 characters
joined by ``"\\n\\n...\\n\\n"``, and the sha256 of the ORIGINAL file is appended
to the ``accuracy.txt`` beside it as a line ``hash=<hex>``; the checker takes
a log under 10 KiB whose ``accuracy.txt`` has a hash as already truncated.
This applies to ``<scenario>/accuracy/`` and ``<scenario>/TEST01/accuracy/``
(where an ``accuracy.txt`` holding only the hash is created if missing).

The original results are never modified: the tree is copied to ``OUT_DIR``
(which must not exist) and each accuracy log is streamed once from the
original, hashing it and keeping its head and tail, so a log of several GB
is never copied whole or held in memory.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.results.layout import RUN_LOCK
from harness.shared.errors import OutputError
from harness.shared.files import write_text_atomic

VIEWABLE_CHARS = 4096
MAX_TRUNCATED_BYTES = 10 * 1024
LOG_NAME = "mlperf_log_accuracy.json"
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


def _accuracy_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` named ``accuracy`` that holds an accuracy log."""
    return sorted(p.parent for p in root.rglob(LOG_NAME) if p.parent.name == "accuracy")


def package_submission(results: str | Path, out: str | Path) -> list[Truncated]:
    """Copy ``results`` to ``out`` with every ``accuracy/`` log truncated and hashed; returns what was truncated."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise OutputError(f"results folder {results} does not exist")
    if out.exists():
        raise OutputError(f"{out} already exists: choose a new folder for the submission copy")
    if out.resolve().is_relative_to(results.resolve()):
        raise OutputError(f"{out} is inside {results}: put the submission copy elsewhere")
    sources = _accuracy_dirs(results)

    def skip(folder: str, names: list[str]) -> list[str]:
        locks = [n for n in names if n == RUN_LOCK]     # the harness's own, not part of a submission
        return locks + ([LOG_NAME] if Path(folder) in sources and LOG_NAME in names else [])

    try:
        shutil.copytree(results, out, ignore=skip)
        done = []
        for src_dir in sources:
            dst_dir = out / src_dir.relative_to(results)
            done.append(write_truncated_log(src_dir / LOG_NAME, dst_dir / LOG_NAME, dst_dir / "accuracy.txt"))
    except OSError as e:
        raise OutputError(f"cannot write the submission copy in {out} ({e.strerror or e}); the original results "
                          f"in {results} are untouched") from None
    return done
