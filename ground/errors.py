"""The kinds of failure every layer shares, and the exit status each one gives.

``InputError`` is the one base of every error that means "the input is wrong"
(a flag, a file, a folder, a checkpoint, a data set) rather than "the code is
wrong": ``run.py`` and the other entry points print its message as one line
and exit with ``ExitStatus.BAD_INPUT``. Each layer declares its own subclass
beside the code that raises it (``CheckpointError``, ``CacheError``,
``SettingsError``, ...); nobody keeps a list of them.

Exit statuses, for every subcommand of ``run.py`` (run, evaluate, demo, report,
package, verify) and ``python -m harness.accuracy``; the README has the same table:

    0    done: every run finished and its result stands (an INVALID LoadGen
         result is a result, not an error; so is a run of the null or
         simulated backend, which every file marks SIMULATED)
    1    it ran, but what it made is not a whole result: failed samples, no
         mAP or an mAP over fewer images than expected, an error LoadGen
         logged (a find-peak search that found no lower bound), a compliance
         audit that failed, a worker that died, logs that could not be written
    2    bad input, before anything ran (or nothing could be written); also
         ``package`` refusing a tree that holds a run which is not a finished
         run of a model
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


class RunStopped(Exception):
    """A benchmark run that stopped before it finished (interrupted, a worker died).

    ``exit_code`` is the status the process leaves with; ``finished`` says whether LoadGen returned
    (when it did not, the process must leave without tearing LoadGen down); ``result``, set by the
    caller that knows it, holds what was done before the stop.
    """

    exit_code: int = ExitStatus.FAILED
    finished: bool = True


class InputError(Exception):
    """The user's input is wrong; the message names the flag, file or value and says what to do."""


class ConfigError(InputError, ValueError):
    """A config value is missing, unknown or out of range; the message says which and where."""


class OutputError(InputError, OSError):
    """The output folder cannot be created or written; the message names it."""
