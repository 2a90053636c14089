"""Crash-safe files, shared by the cache and the run folders.

- :func:`replace_atomically`: write to a temporary name beside the target,
  fsync, then rename over it, so a crash, a full disk or ``kill -9`` leaves
  either the old file or the new one, never half of one.
- :func:`write_text_atomic`: the same for the harness's own outputs, with
  :class:`~ground.errors.OutputError` naming the file and the free space.
- :func:`format_sizes`: byte counts for messages, never two different counts
  printed alike.
- :func:`read_json_object`: a JSON object written by the harness, or None
  when the file is missing, unreadable, not JSON or not an object.
- :func:`open_lock` / :func:`take`: one exclusive ``flock`` per folder
  (preparation of a cache, a scenario's run folders). The kernel drops the
  lock when its holder exits, also on a crash or ``kill -9``, so a lock is
  never stale. Assumes a POSIX file system with ``flock`` (on NFS it may be
  local to one machine).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from ground.errors import OutputError


def replace_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``.<name>.tmp`` beside ``path``, fsync it, rename it over ``path``; OSError on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: Path, data: bytes | str) -> None:
    """:func:`replace_atomically`, raising OutputError that names ``path``; files written earlier stay intact."""
    try:
        replace_atomically(path, data)
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e.strerror or e}){space_hint(Path(path).parent)}; files "
                          "written earlier are intact") from None


def read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, not JSON or not an object."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


_UNITS = ((10 ** 9, "GB"), (10 ** 6, "MB"), (10 ** 3, "KB"))   # decimal units, as disks are sold


def format_sizes(*sizes: int) -> list[str]:
    """Byte counts for people, each in its own unit (GB, MB, KB or bytes) with two decimals, or more where
    two different counts would otherwise read the same: a need just above the free space never reads equal
    to it ("need 20.000 MB and 19.999 MB is free", not "need 0.02 GB and 0.02 GB is free")."""
    out: list[str] = []
    for decimals in range(2, 10):                 # 9 decimals of a GB are single bytes: always distinct
        out = [_in_unit(n, decimals) for n in sizes]
        if len(set(out)) == len(set(sizes)):
            break
    return out


def format_size(size: int) -> str:
    """One byte count for people: "1.35 GB", "20.00 MB", "512 bytes"."""
    return _in_unit(size, 2)


def _in_unit(size: int, decimals: int) -> str:
    scale, unit = next(((s, u) for s, u in _UNITS if abs(size) >= s), (1, "bytes"))
    return f"{size / scale:.{decimals}f} {unit}" if scale > 1 else f"{size:.0f} bytes"


def space_hint(folder: Path) -> str:
    """': N MB free on that disk', or ': the folder no longer exists', for an error message."""
    folder = Path(folder)
    if not folder.is_dir():
        return ": the folder no longer exists (removed during the run?)"
    try:
        return f": {shutil.disk_usage(folder).free / 1e6:.0f} MB free on that disk"
    except OSError:
        return ""


def prove_writable(folder: Path) -> Path:
    """Create ``folder`` and write and remove a probe file in it; OSError when that fails."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write_test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def open_lock(path: Path) -> int:
    """Open (creating it) the lock file ``path``; the caller closes the descriptor, which releases any lock."""
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def take(fd: int) -> str | None:
    """Try the exclusive lock on ``fd`` once. None when taken (this process's pid is then recorded in the
    file); else the holder's pid as it recorded it ("unknown" if it has not yet)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return None


def check_output_file(path: str | Path, flag: str) -> Path:
    """Prove ``path`` writable before any long work: its folder is created if missing and a probe file
    written and removed there. Raises :class:`~ground.errors.OutputError` naming ``flag`` and the path."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{flag} {p} is a folder; give a file name in it, e.g. {p / 'out.json'}")
    try:
        prove_writable(p.parent)
    except OSError as e:
        blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise OutputError(f"cannot write {flag} {p}: {why}; pass a path in a writable folder") from None
    return p
