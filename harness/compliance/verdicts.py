"""The verdict lines of an audit's ``verify_*.txt``: written by harness/compliance/verify.py, read back by
``package`` (is the audit a pass?) and ``report`` (which line to show).

- ``TEST PASS`` / ``TEST FAIL: <why>``: the verdict of a performance check, and of TEST01's
  byte-for-byte check of the responses (``TEST PASS`` only when every sampled response is identical);
- ``mAP check: PASS (...)`` / ``mAP check: FAIL (...)``: TEST01's mAP fallback when some responses differ.

Kept free of the accuracy code, so that reading a verdict imports nothing heavy.
"""
from __future__ import annotations

from pathlib import Path

from harness.results.layout import VERIFY_ACCURACY, VERIFY_PERFORMANCE

TEST_PASS = "TEST PASS"
TEST_FAIL = "TEST FAIL"
MAP_CHECK = "mAP check"
# The lines that make each verify file a pass (a line starting with one of them).
PASS_LINES = {VERIFY_PERFORMANCE: (TEST_PASS,), VERIFY_ACCURACY: (TEST_PASS, f"{MAP_CHECK}: PASS")}
_VERDICT_PREFIXES = ("TEST ", MAP_CHECK)


def verify_lines(path: Path) -> list[str] | None:
    """The lines of the verify file ``path``, or None when it is missing."""
    return path.read_text().splitlines() if path.is_file() else None


def passes(name: str, lines: list[str]) -> bool:
    """Whether the verify file ``name`` (VERIFY_PERFORMANCE, VERIFY_ACCURACY) with ``lines`` says the check passed."""
    return any(line.startswith(PASS_LINES[name]) for line in lines)


def verdict_line(lines: list[str]) -> str:
    """The verdict of a verify file: its last ``TEST ...`` or ``mAP check ...`` line, else its last line."""
    return next((t for t in reversed(lines) if t.startswith(_VERDICT_PREFIXES)), lines[-1] if lines else "")
