"""LoadGen test settings: built-in mlperf.conf, then user.conf, then the run config.

Assumptions about LoadGen 6.0.17 (checked in its source, test_settings_internal.cc,
and by running it):

- ``FromConfig(path, model, scenario)`` with the default ``conf_type=1`` loads
  the built-in mlperf.conf and then the file, but only on its FIRST call in a
  process: a static counter makes every later call skip the built-in conf
  (losing the official RNG seeds) and log an error. This module therefore
  performs that call's two steps itself, each exactly once per settings
  object: ``FromConfig("", model, scenario, 0)`` (built-in conf only) and
  ``FromConfig(path, model, scenario, 2)`` (the file only, no counter). The
  result equals a first ``conf_type=1`` call, and stays correct for later runs
  in the same process (submission mode, tests, the demo).
- It returns ``-2`` (ENOENT) for a file it cannot open and ``-22`` (EINVAL) for a
  line that is not ``key = number``; unknown keys are silently ignored.
- It never sets ``scenario`` and sets ``mode`` only from a ``mode`` key: both are
  set here explicitly. The built-in conf sets expected-QPS / latency hints
  (``target_qps``, SingleStream/MultiStream ``target_latency``) to placeholders,
  so the run config's hints are applied after the files and win.
- ``server_num_issue_query_threads`` must stay 0 from Python.
"""
from __future__ import annotations

from pathlib import Path

from harness.config import RunConfig

LOADGEN_MODEL = "ssd-resnet34"  # the model name keys in user.conf are looked up under
ENOENT, EINVAL = 2, 22


class SettingsError(ValueError):
    """user.conf is missing or unreadable, or the scenario/mode cannot run; the message says which."""


def loadgen_mode(mode: str):
    """Map a run mode ('accuracy', 'performance', 'find-peak') to ``lg.TestMode``."""
    import mlperf_loadgen as lg
    modes = {"accuracy": lg.TestMode.AccuracyOnly, "performance": lg.TestMode.PerformanceOnly,
             "find-peak": lg.TestMode.FindPeakPerformance}
    if mode not in modes:
        raise SettingsError(f"mode {mode!r} is not a single LoadGen run; use one of {', '.join(modes)} "
                            "('submission' runs accuracy, performance, TEST01 and TEST04)")
    return modes[mode]


def make_test_settings(user_conf: str | Path, scenario: str, mode: str, run: RunConfig,
                       model: str = LOADGEN_MODEL):
    """Build ``lg.TestSettings`` for one LoadGen run.

    Args:
        user_conf: the LoadGen settings file (``model.scenario.key = value``).
        scenario: SingleStream, MultiStream, Offline or Server.
        mode: accuracy, performance or find-peak (Server only).
        run: supplies the expected-QPS and expected-latency hints.
    """
    import mlperf_loadgen as lg
    if not hasattr(lg.TestScenario, scenario):
        raise SettingsError(f"unknown scenario {scenario!r}")
    if mode == "find-peak" and scenario != "Server":
        raise SettingsError(f"find-peak mode searches the highest Server QPS; it cannot run {scenario}")
    path = Path(user_conf)
    if not path.is_file():
        raise SettingsError(f"LoadGen settings file {path} does not exist; pass --user-conf FILE "
                            "(the repository's user.conf has the official ssd-resnet34 values)")
    settings = lg.TestSettings()
    rc = settings.FromConfig("", model, scenario, 0)  # built-in mlperf.conf only
    if rc != 0:
        raise SettingsError(f"LoadGen could not apply its built-in mlperf.conf (error {rc})")
    rc = settings.FromConfig(str(path), model, scenario, 2)  # the user file only
    if rc == -ENOENT:
        raise SettingsError(f"LoadGen cannot open the settings file {path}; check that it is readable")
    if rc == -EINVAL:
        raise SettingsError(f"LoadGen cannot parse the settings file {path}: every line must be "
                            "'model.scenario.key = number' or a '#' comment (LoadGen's detail log names the line)")
    if rc != 0:
        raise SettingsError(f"LoadGen rejected the settings file {path} (error {rc})")
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = loadgen_mode(mode)
    settings.offline_expected_qps = float(run.offline_expected_qps)
    settings.server_target_qps = float(run.server_target_qps)
    settings.single_stream_expected_latency_ns = int(run.singlestream_expected_latency_ms * 1e6)
    settings.multi_stream_expected_latency_ns = int(run.multistream_expected_latency_ms * 1e6)
    if settings.server_num_issue_query_threads != 0:
        raise SettingsError(f"{path}: server_num_issue_query_threads must stay 0 with a Python SUT")
    return settings


def describe(settings) -> dict:
    """The settings that decide a run's length and validity, for the run record."""
    keys = ("min_duration_ms", "min_query_count", "performance_sample_count_override",
            "multi_stream_samples_per_query", "server_target_latency_ns", "server_target_latency_percentile",
            "single_stream_target_latency_percentile", "multi_stream_target_latency_percentile",
            "server_target_qps", "offline_expected_qps", "single_stream_expected_latency_ns",
            "multi_stream_expected_latency_ns")
    return {k: getattr(settings, k) for k in keys} | {"scenario": settings.scenario.name, "mode": settings.mode.name}
