"""The kinds of failure every layer shares, and the exit status each one gives.

``InputError`` is the one base of every error that means "the input is wrong"
(a flag, a file, a folder, a checkpoint, a data set) rather than "the code is
wrong": ``run.py`` and the other entry points print its message as one line
and exit with ``ExitStatus.BAD_INPUT``. Each layer declares its own subclass
beside the code that raises it (``CheckpointError``, ``CacheError``,
``SettingsError``, ...); nobody keeps a list of them.

Exit statuses, for every subcommand of ``run.py`` and ``python -m harness.accuracy``:

    0    done (an INVALID LoadGen result is a result, not an error)
    1    the run happened but is not a whole result: failed samples, no mAP,
         a compliance audit that failed, a fault that ended the run early
    2    bad input, before anything was run (or nothing could be written)
    130  interrupted (Ctrl-C, SIGINT)
    143  terminated (SIGTERM)
"""
from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130
    TERMINATED = 143


# What stopped a run, by the exit status it calls for.
INTERRUPTS = {ExitStatus.INTERRUPTED: "interrupted (Ctrl-C)", ExitStatus.TERMINATED: "terminated (SIGTERM)"}


class InputError(Exception):
    """The user's input is wrong; the message names the flag, file or value and says what to do."""


class ConfigError(InputError, ValueError):
    """A config value is missing, unknown or out of range; the message says which and where."""


class OutputError(InputError, OSError):
    """The output folder cannot be created or written; the message names it."""
