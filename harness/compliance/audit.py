"""MLPerf compliance audits (TEST01, TEST04, TEST04-A, TEST04-B, TEST05): their ``audit.config`` and its placement.

Facts about LoadGen 6.0.17 (loadgen.cc ``StartTest``, checked in its source):
``StartTest``/``StartTestWithLogSettings`` take ``audit_config_filename``
(default ``"audit.config"``, relative to the current working directory).
If that file exists, StartTest, after logging "Found Audit Config file",
applies it on top of the requested settings with ``FromConfig(file, "*",
scenario, 2)``: keys are looked up as ``*.<scenario>.key`` then ``*.*.key``.
``TestSettings.FromConfig`` itself never reads it. So a stray ``audit.config``
in the working directory silently changes every later run started from there.

This module therefore:

- refuses to start any run while an ``audit.config`` sits in the working
  directory (:func:`check_no_stray_audit_config`), with a message saying where
  it is and what to do;
- for an audit, writes the audit's own config into the working directory only
  for that run and removes it afterwards, also on Ctrl-C, SIGTERM or an error
  (:func:`placed_audit_config`, a context manager), and passes its absolute
  path to LoadGen explicitly.

Audit settings (mlcommons/inference ``compliance/nvidia`` at tag v2.0, commit
33894a19c4af6207f7cfdda75f84570f04836de5; TEST04 as in v4.0, commit
e39003a9c4c89a2215db0ca57ad7a57b16f9a785); which audits run is the rules
profile's (harness/settings/rules.py):

- TEST01 (``TEST01/ssd-resnet34/audit.config``): a performance run that also
  logs a random sample of responses (``accuracy_log_sampling_target`` responses,
  seed ``accuracy_log_rng_seed``), compared with the accuracy run.
- TEST04-A: a performance run issuing the ``performance_sample_count`` loaded
  samples once each (``performance_issue_unique = 1``).
- TEST04-B, and TEST04 of later rounds (the same file): a performance run
  issuing one sample over and over (``performance_issue_same = 1``, index
  ``performance_issue_same_index``); it must not be much faster than TEST04-A
  (v2.0) or the performance run (later rounds): no caching of results.
- TEST05: a performance run with other RNG seeds. v2.0's ``audit.config`` sets
  ``*.*.qsl_rng_seed`` and the other two, but LoadGen 6.0.17 reads seeds only
  from its built-in conf (``FromConfig`` with ``conf_type`` 0), never from an
  audit.config; it takes TEST05's seeds from ``TestSettings.test05_*`` when
  ``TestSettings.test05`` is on. The harness sets those (settings/loadgen.py),
  and this file only switches to a performance run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from ground.errors import InputError
from harness.settings.rules import AUDITS

log = logging.getLogger("harness")

AUDIT_FILE = "audit.config"
TEST01_SAMPLING_TARGET = 256
TEST01_RNG_SEED = 720381539243781796
TEST04_SAME_INDEX = 3

_HEADER = ("# Written by the harness for one compliance run and removed after it.\n"
           "# Format: model.scenario.key = value; '*' matches any model (LoadGen applies it with model '*').\n")


class AuditConfigError(InputError, RuntimeError):
    """An audit.config is where LoadGen would read it, or cannot be written there; the message says what to do."""


def check_audit_samples(audits: tuple[str, ...] | list[str], performance_sample_count: int, total: int) -> None:
    """Refuse TEST04-A on a data set smaller than the performance sample count (AuditConfigError).

    TEST04-A (``performance_issue_unique``) issues ``performance_sample_count`` samples, each from the
    loaded set; LoadGen 6.0.17 (loadgen.cc ``GenerateQueries``) indexes that set past its end when it
    holds fewer (a data set smaller than the override), and the process dies of a segmentation fault.
    """
    if "TEST04-A" in audits and 0 < total < performance_sample_count:
        raise AuditConfigError(
            f"TEST04-A issues each of the {performance_sample_count} performance samples once, but the data set has "
            f"only {total} images (LoadGen would read past them and crash): use at least {performance_sample_count} "
            "images, or lower performance_sample_count_override in user.conf (the round requires 64 for a submission)")


def audit_config_text(test: str) -> str:
    """The ``audit.config`` of ``test`` (one of AUDITS); mode 2 = PerformanceOnly."""
    if test == "TEST01":
        return (_HEADER + "*.*.mode = 2\n"
                f"*.*.accuracy_log_rng_seed = {TEST01_RNG_SEED}\n"
                f"*.*.accuracy_log_sampling_target = {TEST01_SAMPLING_TARGET}\n")
    if test == "TEST04-A":
        return _HEADER + "*.*.mode = 2\n*.*.performance_issue_unique = 1\n*.*.performance_issue_same = 0\n"
    if test in ("TEST04", "TEST04-B"):
        return (_HEADER + "*.*.mode = 2\n*.*.performance_issue_unique = 0\n*.*.performance_issue_same = 1\n"
                f"*.*.performance_issue_same_index = {TEST04_SAME_INDEX}\n")
    if test == "TEST05":
        return (_HEADER + "# TEST05's seeds are set on TestSettings (test05 = true, test05_*_rng_seed): LoadGen\n"
                "# 6.0.17 ignores seeds in an audit.config.\n*.*.mode = 2\n")
    raise ValueError(f"unknown audit {test!r}; known: {', '.join(AUDITS)}")


def stray_audit_config(cwd: str | Path | None = None) -> Path | None:
    """The ``audit.config`` LoadGen would pick up from ``cwd`` (default: the working directory), or None."""
    path = Path(cwd or os.getcwd()) / AUDIT_FILE
    return path if path.exists() or path.is_symlink() else None


_PLACED_BY = "placed by process"


def _placing_process(path: Path) -> int | None:
    """The pid that placed ``path`` if it is still running (a live compliance run), else None."""
    try:
        with open(path, errors="replace") as f:
            m = re.match(rf"# {_PLACED_BY} (\d+) ", f.readline())
    except OSError:
        return None
    if m is None:
        return None
    pid = int(m.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:   # alive, owned by someone else
        return pid
    return pid


def check_no_stray_audit_config(cwd: str | Path | None = None) -> None:
    """Raise :class:`AuditConfigError` when an ``audit.config`` would silently change the next run."""
    stray = stray_audit_config(cwd)
    owner = _placing_process(stray) if stray is not None else None
    if owner is not None:
        raise AuditConfigError(
            f"{stray} belongs to a compliance run (process {owner}) started in this working directory, which "
            "is running now; LoadGen would apply it to this run too. Wait for that run to end, or start this "
            "one from another working directory")
    if stray is not None:
        raise AuditConfigError(
            f"found {stray}: LoadGen applies an audit.config in the working directory to every run started "
            "there, which would silently change this run's settings. Remove it (it is left over from an "
            "interrupted compliance run or copied by hand); `--mode submission` places each audit's own "
            "config itself")


@contextlib.contextmanager
def placed_audit_config(test: str, cwd: str | Path | None = None) -> Iterator[Path]:
    """Write ``test``'s audit.config into ``cwd`` for the duration of the ``with`` block, then remove it.

    Yields the absolute path (pass it to LoadGen). Refuses to overwrite an existing file. The file is
    removed however the block ends (return, exception, KeyboardInterrupt).
    """
    check_no_stray_audit_config(cwd)
    path = (Path(cwd or os.getcwd()) / AUDIT_FILE).absolute()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise AuditConfigError(f"cannot write {path} for the {test} audit ({e.strerror}); LoadGen reads the "
                               "audit settings from the working directory: run from a writable folder") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"# {_PLACED_BY} {os.getpid()} for {test}; removed when that run ends\n" + audit_config_text(test))
        log.info("%s: placed %s for this run only", test, path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("%s: removed %s", test, path)
