"""The documented commands leave nothing untracked in a checkout: what they write is ignored by git (or tracked).

Reads every fenced code block of README.md and docs/*.md for the folders and files a command writes
(``--out``, ``--output``, ``--cache-dir``, ``--work-dir``) given as relative paths, and asks git whether
each is ignored. Absolute paths (``/coco``, ``/tmp/...``), placeholders (``...``) and shell variables are
the user's to choose and are skipped.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRITE_FLAGS = ("--out", "--output", "--cache-dir", "--work-dir")


def _written_paths() -> dict[str, str]:
    """{relative path a documented command writes: 'page: line'}."""
    found: dict[str, str] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        in_code = False
        for line in page.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            tokens = [t.strip("\"'") for t in line.split()] if in_code else []
            for flag, value in zip(tokens, tokens[1:]):
                if flag in WRITE_FLAGS and value and not value.startswith(("/", "$", "~", "<")) \
                        and "..." not in value:
                    found.setdefault(value.rstrip("/"), f"{page.relative_to(ROOT)}: {line.strip()}")
    return found


def _git(*args: str, stdin: str = "") -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_documented_commands_write_only_ignored_or_tracked_paths():
    written = _written_paths()
    assert "sim_data" in written          # the simulated page's data set, written into the checkout
    paths = sorted(written)
    inside = [f"{p}/x" for p in paths]    # a file in the folder: '/results/' matches only a folder's contents
    ignored = set(_git("check-ignore", "--no-index", "--stdin", stdin="\n".join(paths + inside) + "\n").split())
    tracked = set(_git("ls-files", "--", *paths).split())
    left = [f"{p} ({written[p]})" for p in paths if not {p, f"{p}/x"} & ignored and p not in tracked]
    assert not left, "documented commands would leave untracked files: " + "; ".join(left)
