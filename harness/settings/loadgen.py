"""LoadGen test settings: built-in mlperf.conf, the round's rules, then user.conf, then the run config.

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
- Between the two, the rules profile of ``run.rules`` (harness/settings/rules.py)
  sets what that MLPerf round's mlperf.conf set and LoadGen 6.0.17's no longer
  does: the seeds (a user.conf cannot set them), TEST05's seeds, durations,
  query counts, percentiles and the Server bound. LoadGen logs the settings in
  force in ``mlperf_log_detail.txt`` (``effective_qsl_rng_seed`` ...).
- An audit run (``mode`` one of rules.AUDITS) is a performance run; TEST05 also
  turns ``test05`` on, which makes StartTest use the ``test05_*`` seeds.
- LoadGen names no bad line and ignores unknown keys, so the file is first
  parsed and checked here (harness/settings/user_conf.py); LoadGen then reads it itself.
- It never sets ``scenario`` and sets ``mode`` only from a ``mode`` key: both are
  set here explicitly (user_conf.py rejects a ``mode`` line).
- The built-in conf sets the expected-QPS / latency hints (``*.Server.target_qps``,
  ``*.Offline.target_qps``, SingleStream/MultiStream ``target_latency``) to
  placeholders. Each hint is therefore resolved here, first found wins: the run
  config's value when given (flag or config file), then the user file's value
  for this model (LoadGen's lookup: ``model.S.key``, ``*.S.key``,
  ``model.*.key``, ``*.*.key``), then ``harness.config.HINT_DEFAULTS``.
- ``server_num_issue_query_threads`` must stay 0 from Python.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harness.settings.config import HINT_DEFAULTS, RunConfig
from harness.settings.rules import AUDITS, apply_rules, rules_for
from harness.settings.user_conf import SettingsError, UserConf, parse_user_conf

__all__ = ["LOADGEN_MODEL", "SettingsError", "Hint", "resolve_hints", "loadgen_mode", "make_test_settings"]

log = logging.getLogger("harness")
LOADGEN_MODEL = "ssd-resnet34"  # the model name keys in user.conf are looked up under
ENOENT, EINVAL = 2, 22
# run config field -> (TestSettings attribute, user.conf scenario and key, factor from config units to settings units)
_HINTS = {"offline_expected_qps": ("offline_expected_qps", "Offline", "target_qps", 1.0),
          "server_target_qps": ("server_target_qps", "Server", "target_qps", 1.0),
          "singlestream_expected_latency_ms": ("single_stream_expected_latency_ns", "SingleStream", "target_latency",
                                               1e6),
          "multistream_expected_latency_ms": ("multi_stream_expected_latency_ns", "MultiStream", "target_latency",
                                              1e6)}


@dataclass(frozen=True)
class Hint:
    """One resolved LoadGen hint, in the run config's units (QPS or ms), and where it came from."""

    field: str
    value: float
    source: str   # "run config", "<user.conf> line N (...)" or "harness default"


def resolve_hints(run: RunConfig, conf: UserConf, model: str = LOADGEN_MODEL) -> dict[str, Hint]:
    """Each hint by precedence: the run config, then ``conf``'s entry for ``model``, then HINT_DEFAULTS."""
    hints = {}
    for name, (_, scenario, key, _) in _HINTS.items():
        given = getattr(run, name)
        entry = conf.lookup(model, scenario, key)
        if given is not None:
            hints[name] = Hint(name, float(given), "run config")
        elif entry is not None:
            hints[name] = Hint(name, entry.value, f"{conf.path} {entry.where}")
        else:
            hints[name] = Hint(name, HINT_DEFAULTS[name], "harness default")
    return hints


def loadgen_mode(mode: str):
    """Map a run mode ('accuracy', 'performance', 'find-peak' or an audit) to ``lg.TestMode``."""
    import mlperf_loadgen as lg
    if mode in AUDITS:
        mode = "performance"
    modes = {"accuracy": lg.TestMode.AccuracyOnly, "performance": lg.TestMode.PerformanceOnly,
             "find-peak": lg.TestMode.FindPeakPerformance}
    if mode not in modes:
        raise SettingsError(f"mode {mode!r} is not a single LoadGen run; use one of {', '.join(modes)} "
                            "('submission' runs accuracy, performance and the rules' audits)")
    return modes[mode]


def make_test_settings(user_conf: str | Path, scenario: str, mode: str, run: RunConfig,
                       model: str = LOADGEN_MODEL):
    """Build ``lg.TestSettings`` for one LoadGen run.

    Args:
        user_conf: the LoadGen settings file (``model.scenario.key = value``).
        scenario: SingleStream, MultiStream, Offline or Server.
        mode: accuracy, performance, find-peak (Server only) or an audit (TEST01, TEST05, ...).
        run: the rules profile (``run.rules``) and the expected-QPS and expected-latency hints that win
            over the file's (None = not given).

    Raises:
        SettingsError: the file is missing or has a bad line (named), or the scenario/mode cannot run.
    """
    import mlperf_loadgen as lg
    if not hasattr(lg.TestScenario, scenario):
        raise SettingsError(f"unknown scenario {scenario!r}")
    if mode == "find-peak" and scenario != "Server":
        raise SettingsError(f"find-peak mode searches the highest Server QPS; it cannot run {scenario}")
    path = Path(user_conf)
    conf = parse_user_conf(path)
    rules = rules_for(run.rules)
    settings = lg.TestSettings()
    rc = settings.FromConfig("", model, scenario, 0)  # built-in mlperf.conf only
    if rc != 0:
        raise SettingsError(f"LoadGen could not apply its built-in mlperf.conf (error {rc})")
    apply_rules(settings, rules, scenario)
    rc = settings.FromConfig(str(path), model, scenario, 2)  # the user file only
    if rc == -ENOENT:
        raise SettingsError(f"LoadGen cannot open the settings file {path}; check that it is readable")
    if rc == -EINVAL:  # parse_user_conf accepts only what LoadGen parses, so this means the file changed meanwhile
        raise SettingsError(f"LoadGen cannot parse the settings file {path}: every line must be "
                            "'model.scenario.key = number' or a '# comment'")
    if rc != 0:
        raise SettingsError(f"LoadGen rejected the settings file {path} (error {rc})")
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = loadgen_mode(mode)
    settings.test05 = mode == "TEST05"
    for name, hint in resolve_hints(run, conf, model).items():
        attr, _, _, factor = _HINTS[name]
        value = hint.value * factor
        setattr(settings, attr, int(value) if attr.endswith("_ns") else float(value))
        log.debug("%s = %s from %s", name, hint.value, hint.source)
    if settings.server_num_issue_query_threads != 0:
        raise SettingsError(f"{path}: server_num_issue_query_threads must stay 0 with a Python SUT")
    return settings
