"""Rules profiles: what one MLPerf Inference round's ``mlperf.conf`` and compliance folder set for ssd-resnet34.

LoadGen 6.0.17's built-in mlperf.conf is a later round's: its RNG seeds are
not those of any round that had ssd-resnet34, it has no ssd-resnet34 entries,
and a user.conf cannot set a seed (``FromConfig`` reads seeds only from the
built-in conf). A profile therefore sets, on ``lg.TestSettings`` directly,
what the round's mlperf.conf set: the three seeds, TEST05's three seeds
(``test05_*``, used by LoadGen only when ``test05`` is on), the minimum
duration and query counts, the latency percentiles and the Server bound, the
MultiStream samples per query and the performance sample count. The user.conf
is applied after it (as LoadGen applied user.conf after mlperf.conf), so a
short user.conf still shortens a run, and the checker then reports it.

Profiles:

- ``v2.0`` (the default; the last round with ssd-resnet34). Values from
  mlcommons/inference tag v2.0 (commit 33894a19c4af6207f7cfdda75f84570f04836de5):
  ``mlperf.conf`` (seeds, ``*.<scenario>.*`` and ``ssd-resnet34.*`` lines),
  ``compliance/nvidia/`` (TEST01 with ``TEST01/ssd-resnet34/audit.config``,
  TEST04-A, TEST04-B, TEST05; its README exempts only rnnt, bert, dlrm and
  3d-unet from TEST04) and ``TEST05/audit.config`` (TEST05's seeds, also in
  v4.0's ``tools/submission/submission_checker.py`` ``test05_seeds`` of v2.0,
  commit e39003a9c4c89a2215db0ca57ad7a57b16f9a785).
- ``none``: no round's values. LoadGen 6.0.17's built-in mlperf.conf and the
  user.conf alone decide, and the audits are TEST01 and TEST04 (the later
  rounds' pair, TEST04 checked against the performance run). MLPerf's checkers
  reject such runs' seeds; use it to measure, not to submit.

The hints (expected QPS, expected latency) are not part of a profile: they
describe the system, not the rules (harness/settings/loadgen.py resolves them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

DEFAULT_RULES = "v2.0"
SUBMISSION_MODEL = "ssd-resnet34"
# Every compliance audit a profile may run (each a performance run with its own audit.config,
# harness/compliance/audit.py); a profile's ``audits`` lists those of its round.
AUDITS = ("TEST01", "TEST04", "TEST04-A", "TEST04-B", "TEST05")


@dataclass(frozen=True)
class Seeds:
    """LoadGen's three RNG seeds (``qsl_rng_seed``, ``sample_index_rng_seed``, ``schedule_rng_seed``)."""

    qsl: int
    sample_index: int
    schedule: int


@dataclass(frozen=True)
class Rules:
    """What one round fixes for ssd-resnet34, per scenario where it differs; None = LoadGen's own value."""

    name: str
    source: str                                   # where the values come from (repository, tag, commit)
    seeds: Seeds | None = None
    test05_seeds: Seeds | None = None
    min_duration_ms: int | None = None            # every scenario
    min_query_count: Mapping[str, int] = field(default_factory=dict)
    latency_percentile: Mapping[str, float] = field(default_factory=dict)   # SingleStream 0.90, ...
    server_target_latency_ms: int | None = None   # the Server latency bound
    multistream_samples_per_query: int | None = None
    performance_sample_count: int | None = None
    audits: tuple[str, ...] = ()                  # the compliance audits --mode submission runs, in order
    checker_version: str | None = None            # the --version MLPerf's submission checker takes

    def mlperf_conf(self) -> str:
        """The round's mlperf.conf lines this profile applies, as ``model.scenario.key = value`` text."""
        lines = [f"# The MLPerf Inference {self.name} settings for {SUBMISSION_MODEL} that this harness applied",
                 f"# (from {self.source}), then user.conf. Format: model.scenario.key = value, times in ms."]
        if self.seeds is not None:
            lines += [f"*.*.qsl_rng_seed = {self.seeds.qsl}", f"*.*.sample_index_rng_seed = {self.seeds.sample_index}",
                      f"*.*.schedule_rng_seed = {self.seeds.schedule}"]
        if self.performance_sample_count is not None:
            lines.append(f"{SUBMISSION_MODEL}.*.performance_sample_count_override = {self.performance_sample_count}")
        for scenario in ("SingleStream", "MultiStream", "Server", "Offline"):
            if scenario in self.latency_percentile:
                lines.append(f"*.{scenario}.target_latency_percentile = "
                             f"{round(100 * self.latency_percentile[scenario])}")
            if self.min_duration_ms is not None:
                lines.append(f"*.{scenario}.min_duration = {self.min_duration_ms}")
            if scenario in self.min_query_count:
                lines.append(f"*.{scenario}.min_query_count = {self.min_query_count[scenario]}")
        if self.multistream_samples_per_query is not None:
            lines.append(f"*.MultiStream.samples_per_query = {self.multistream_samples_per_query}")
        if self.server_target_latency_ms is not None:
            lines.append(f"{SUBMISSION_MODEL}.Server.target_latency = {self.server_target_latency_ms}")
        return "\n".join(lines) + "\n"


_V20 = "mlcommons/inference tag v2.0 (33894a19c4af6207f7cfdda75f84570f04836de5), mlperf.conf and compliance/nvidia"
RULES: Mapping[str, Rules] = MappingProxyType({
    "v2.0": Rules(
        name="v2.0", source=_V20,
        seeds=Seeds(6655344265603136530, 15863379492028895792, 12662793979680847247),
        # compliance/nvidia/TEST05/audit.config at v2.0
        test05_seeds=Seeds(313588358309856706, 471397156132239067, 413914573387865862),
        min_duration_ms=600000,
        min_query_count={"SingleStream": 1024, "MultiStream": 270336, "Server": 270336, "Offline": 24576},
        latency_percentile={"SingleStream": 0.90, "MultiStream": 0.99, "Server": 0.99, "Offline": 0.90},
        server_target_latency_ms=100,            # ssd-resnet34.Server.target_latency
        multistream_samples_per_query=8,
        performance_sample_count=64,             # ssd-resnet34.*.performance_sample_count_override
        audits=("TEST01", "TEST04-A", "TEST04-B", "TEST05"),
        checker_version="v2.0"),
    "none": Rules(
        name="none", source="LoadGen 6.0.17's built-in mlperf.conf and the user.conf only",
        audits=("TEST01", "TEST04")),
})


class RulesError(ValueError):
    """An unknown rules profile; the message lists the known ones."""


def rules_for(name: str) -> Rules:
    """The profile called ``name`` (see RULES)."""
    try:
        return RULES[name]
    except KeyError:
        raise RulesError(f"unknown rules {name!r}; known: {', '.join(RULES)}") from None


def apply_rules(settings: Any, rules: Rules, scenario: str) -> None:
    """Set on ``settings`` (an ``lg.TestSettings``) what ``rules`` fixes for ``scenario``, as mlperf.conf did.

    Call it after LoadGen's built-in conf and before the user.conf, so the user.conf wins where it
    sets a key (seeds it cannot set).
    """
    if rules.seeds is not None:
        settings.qsl_rng_seed = rules.seeds.qsl
        settings.sample_index_rng_seed = rules.seeds.sample_index
        settings.schedule_rng_seed = rules.seeds.schedule
    if rules.test05_seeds is not None:
        settings.test05_qsl_rng_seed = rules.test05_seeds.qsl
        settings.test05_sample_index_rng_seed = rules.test05_seeds.sample_index
        settings.test05_schedule_rng_seed = rules.test05_seeds.schedule
    if rules.min_duration_ms is not None:
        settings.min_duration_ms = rules.min_duration_ms
    if scenario in rules.min_query_count:
        settings.min_query_count = rules.min_query_count[scenario]
    for name, attr in (("SingleStream", "single_stream_target_latency_percentile"),
                       ("MultiStream", "multi_stream_target_latency_percentile"),
                       ("Server", "server_target_latency_percentile")):
        if name in rules.latency_percentile:
            setattr(settings, attr, rules.latency_percentile[name])
    if rules.server_target_latency_ms is not None:
        settings.server_target_latency_ns = rules.server_target_latency_ms * 1_000_000
    if rules.multistream_samples_per_query is not None:
        settings.multi_stream_samples_per_query = rules.multistream_samples_per_query
    if rules.performance_sample_count is not None:
        settings.performance_sample_count_override = rules.performance_sample_count
