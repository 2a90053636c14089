"""Read and check a LoadGen settings file (user.conf) before LoadGen sees it.

LoadGen's own parser returns only an error code for a bad line, names the line
in a detail log that does not exist yet, and silently ignores unknown keys,
misspelled scenarios and negative values (``min_duration = -5`` becomes about
1.8e19 ms). This module parses the file itself and raises :class:`SettingsError`
naming the file, the line number, the line, and what to write instead.

Facts about mlcommons-loadgen 6.0.17, from ``TestSettings::FromConfig`` in
``loadgen/test_settings_internal.cc`` (mlcommons/inference, the commit that set
``loadgen/VERSION.txt`` to 6.0.17), checked by running the installed wheel:

- A line is split at whitespace; a token that is exactly ``#`` ends the line
  before the value, but ``key = 5 # note`` is an error (the ``#`` is read as a
  second value). ``key=5`` is one token: LoadGen keeps it as a key with no
  value and ignores it. Of several values the last wins.
- A key is ``model.scenario.name``; a value is looked up under
  ``model.S.name``, then ``*.S.name``, then ``model.*.name``, then
  ``*.*.name`` (the first found wins; of repeated lines the last one).
  Scenario-specific keys are looked up under their own scenario whatever the
  run's scenario: ``target_qps`` under Server and Offline, ``target_latency``
  under SingleStream, MultiStream and Server.
- Integer keys are read with ``strtoull(value, 0)``: ``1e3`` reads as 1,
  ``010`` as 8, ``-5`` wraps around. ``Server.target_latency`` is an integer
  (milliseconds); SingleStream/MultiStream ``target_latency`` are real numbers.
  ``target_latency_percentile`` is in percent (LoadGen multiplies it by 0.01).
- The RNG seeds, ``accuracy_log_probability`` and the ``test05`` keys are read
  only from the built-in mlperf.conf; in a user file they are ignored.

Here a value must be a plain decimal number (integers for integer keys), so
every accepted file means to LoadGen what it says. Lines of other models are
checked the same way but never looked up for ``ssd-resnet34``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from ground.errors import InputError

SCENARIO_NAMES = ("SingleStream", "MultiStream", "Offline", "Server")
ANY = "*"
_ALL = SCENARIO_NAMES


class SettingsError(InputError, ValueError):
    """user.conf is missing, unreadable or wrong, or the scenario/mode cannot run; the message says which."""


@dataclass(frozen=True)
class KeySpec:
    """One key LoadGen 6.0.17 reads from a user file.

    kind: "int" (whole number), "real", "flag" (0 or 1) or "percent" (LoadGen multiplies by 0.01).
    scenarios: the scenarios LoadGen reads the key for. positive: must be > 0 (else >= 0).
    limit: (largest value, why) for "int" and "real" keys, see ``_LIMITS``.
    """

    kind: str
    scenarios: tuple[str, ...] = _ALL
    positive: bool = False
    limit: tuple[int | float, str] | None = None


# The largest value of each kind of number that LoadGen 6.0.17 holds as written (test_settings_internal.cc):
# beyond it, strtoull saturates at 2^64-1 or the value wraps, and LoadGen then crashes or runs for ever.
_MS = ((2**63 - 1) // 10**6, "LoadGen holds milliseconds as signed 64-bit nanoseconds")
_COUNT = (2**63 - 1, "LoadGen counts in 64-bit integers and multiplies the counts")
_SEED = (2**64 - 1, "LoadGen reads it as an unsigned 64-bit integer")
_INT32 = (2**31 - 1, "LoadGen stores it in a 32-bit int")
_QPS = (1e9, "LoadGen schedules queries in whole nanoseconds")


KEYS: dict[str, KeySpec] = {
    "min_duration": KeySpec("int", limit=_MS),                        # ms
    "max_duration": KeySpec("int", limit=_MS),                        # ms; 0 = no limit
    "min_query_count": KeySpec("int", limit=_COUNT),
    "max_query_count": KeySpec("int", limit=_COUNT),                  # 0 = no limit
    "performance_sample_count_override": KeySpec("int", limit=_COUNT),  # 0 = the QSL's own count
    "accuracy_sample_count_override": KeySpec("int", limit=_COUNT),   # 0 = every sample
    "target_qps": KeySpec("real", ("Server", "Offline"), positive=True, limit=_QPS),
    "target_latency": KeySpec("real", ("SingleStream", "MultiStream", "Server"), positive=True, limit=_MS),  # ms
    "target_latency_percentile": KeySpec("percent", ("SingleStream", "MultiStream", "Server")),
    "samples_per_query": KeySpec("int", ("MultiStream",), positive=True, limit=_COUNT),
    "max_async_queries": KeySpec("int", ("Server",), limit=_INT32),  # 0 = no limit
    "coalesce_queries": KeySpec("flag", ("Server",)),
    "ttft_latency": KeySpec("int", ("Server",), limit=_MS),          # ms, with use_token_latencies
    "tpot_latency": KeySpec("int", ("Server",), limit=_MS),          # ms, with use_token_latencies
    "use_token_latencies": KeySpec("flag"),
    "infer_token_latencies": KeySpec("flag"),
    "token_latency_scaling_factor": KeySpec("int", limit=_COUNT),
    "performance_issue_unique": KeySpec("flag"),
    "performance_issue_same": KeySpec("flag"),
    "performance_issue_same_index": KeySpec("int", limit=_COUNT),
    "sample_concatenate_permutation": KeySpec("flag"),
    "print_timestamps": KeySpec("flag"),
    "accuracy_log_rng_seed": KeySpec("int", limit=_SEED),
    "accuracy_log_sampling_target": KeySpec("int", limit=_COUNT),
}
# Keys LoadGen knows but that have no effect in a user file here: say so instead of ignoring them.
NO_EFFECT: dict[str, str] = {
    **{k: "LoadGen 6.0.17 reads it only from its built-in mlperf.conf and ignores it in a user file"
       for k in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_probability",
                 "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed")},
    "mode": "the harness sets LoadGen's test mode from --mode (run.mode), so this line would have no effect",
}
_REAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+")
# What LoadGen's strtoul/strtod accept as a whole token (decimal, hex, exponent, inf, nan).
_LOADGEN_NUMBER = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)",
                             re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One setting line: ``model.scenario.key = value`` (value as LoadGen reads it, before any scaling)."""

    model: str
    scenario: str
    key: str
    value: float
    line_no: int
    text: str

    @property
    def where(self) -> str:
        return f"line {self.line_no} ({self.text.strip()})"


@dataclass(frozen=True)
class UserConf:
    """The checked lines of one settings file, in file order."""

    path: Path
    entries: tuple[Entry, ...]

    def lookup(self, model: str, scenario: str, key: str) -> Entry | None:
        """The entry LoadGen uses for ``key`` of ``model`` in ``scenario`` (see the module docstring), or None."""
        latest = {(e.model, e.scenario, e.key): e for e in self.entries}
        for m, s in ((model, scenario), (ANY, scenario), (model, ANY), (ANY, ANY)):
            if (m, s, key) in latest:
                return latest[(m, s, key)]
        return None


def unused_file_warning(conf: UserConf, model: str) -> str | None:
    """A warning when no setting of ``conf`` applies to ``model`` (LoadGen would then use its defaults), else None.

    A line applies when its model is ``model`` or ``*``. A file of comments only is not warned about.
    """
    if not conf.entries or any(e.model in (model, ANY) for e in conf.entries):
        return None
    named = sorted({e.model for e in conf.entries})
    close = any(difflib.SequenceMatcher(None, name.lower(), model).ratio() >= 0.8 for name in named)
    hint = f"; did you mean {model}?" if close else ""
    return (f"LoadGen settings file {conf.path}: none of its {len(conf.entries)} settings applies to {model}, the "
            f"model this run uses (its lines name {', '.join(named)}{hint}), so LoadGen's defaults apply (e.g. a "
            f"600 s minimum duration); write {model}.<scenario>.<key> = <value> or *.<scenario>.<key> = <value>")


def parse_user_conf(path: str | Path) -> UserConf:
    """Read and check ``path``; raise SettingsError naming the first bad line and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"LoadGen settings file {path} does not exist; pass --user-conf FILE "
                            "(the repository's user.conf has the official ssd-resnet34 values)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"settings file {path} is not UTF-8 text; save it as plain text") from None
    except OSError as e:
        raise SettingsError(f"cannot read the settings file {path}: {e.strerror}") from None
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        entry = _parse_line(path, n, line)
        if entry is not None:
            entries.append(entry)
    return UserConf(path, tuple(entries))


def _parse_line(path: Path, n: int, line: str) -> Entry | None:
    tokens = line.split()
    if not tokens or tokens[0] == "#":
        return None

    def fail(problem: str, syntax: bool = False) -> SettingsError:
        head = "cannot parse the settings file" if syntax else "settings file"
        return SettingsError(f"{head} {path}, line {n} ({line.strip()}): {problem}")

    if tokens[0].startswith("#"):
        if _loadgen_accepts(tokens):
            return None  # LoadGen reads it as a key no model has: a commented-out line
        raise fail(f"LoadGen treats '#' as a comment only when a space follows it; write '# {line.strip()[1:]}'",
                   syntax=True)
    if len(tokens) == 1 and "=" in tokens[0]:
        raise fail("put spaces around '=' (LoadGen reads 'key=value' as one word and ignores it); write '"
                   + tokens[0].replace("=", " = ", 1) + "'", syntax=True)
    if len(tokens) < 3 or tokens[1] != "=":
        raise fail("every line must be 'model.scenario.key = number' (spaces around '=') or a '# comment'",
                   syntax=True)
    if len(tokens) > 3:
        if tokens[3].startswith("#"):
            raise fail("LoadGen rejects a comment after the value; put the comment on a line of its own",
                       syntax=True)
        raise fail("one value per line (LoadGen would keep only the last)", syntax=True)
    name, raw = tokens[0], tokens[2]
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        raise fail(f"'{name}' must be model.scenario.key, e.g. ssd-resnet34.Offline.min_duration", syntax=True)
    model, scenario, key = parts
    if scenario != ANY and scenario not in SCENARIO_NAMES:
        guess = _closest(scenario, SCENARIO_NAMES)
        raise fail(f"unknown scenario '{scenario}'" + (f"; did you mean '{guess}'?" if guess else "")
                   + f" (use *, {', '.join(SCENARIO_NAMES)}, spelled exactly)")
    if key in NO_EFFECT:
        raise fail(f"{key}: {NO_EFFECT[key]}; remove the line")
    spec = KEYS.get(key)
    if spec is None:
        guess = _closest(key, tuple(KEYS))
        raise fail(f"LoadGen 6.0.17 has no key '{key}'"
                   + (f"; did you mean '{guess}'?" if guess else f"; known keys: {', '.join(sorted(KEYS))}"))
    if scenario != ANY and scenario not in spec.scenarios:
        raise fail(f"LoadGen reads {key} only for {', '.join(spec.scenarios)}, so a line for {scenario} is ignored; "
                   f"use {model}.{spec.scenarios[0]}.{key} or remove the line")
    return Entry(model, scenario, key, _value(spec, name, scenario, raw, fail), n, line)


def _value(spec: KeySpec, name: str, scenario: str, raw: str, fail) -> float:
    """The number ``raw`` means for the key ``name`` (model.scenario.key), checked against its kind and range."""
    key = name.rsplit(".", 1)[1]
    if not _REAL.fullmatch(raw):
        raise fail(f"the value '{raw}' is not a plain decimal number; write e.g. {name} = 100", syntax=True)
    value = float(raw)
    whole = spec.kind in ("int", "flag") or (key == "target_latency" and scenario in ("Server", ANY))
    if value < 0:
        wraps = " (LoadGen would read it as about 1.8e19)" if whole else ""
        raise fail(f"{key} must be {'positive' if spec.positive else '0 or more'}, not {raw}{wraps}")
    if whole and not _INT.fullmatch(raw):
        why = "LoadGen reads Server target_latency as whole milliseconds" if spec.kind == "real" else \
            f"LoadGen reads {key} as a whole number"
        raise fail(f"{why}, so '{raw}' would read as {_strtoull_prefix(raw)}; write a whole number")
    if whole and len(raw.lstrip("+-")) > 1 and raw.lstrip("+-").startswith("0"):
        raise fail(f"LoadGen reads a number with a leading 0 as octal ('{raw}'); write {int(value)}")
    if spec.kind == "flag" and value not in (0, 1):
        raise fail(f"{key} is a switch: write 0 (off) or 1 (on), not {raw}")
    if spec.kind == "percent" and not 1 <= value < 100:
        raise fail(f"{key} is in percent (LoadGen multiplies it by 0.01): write a value from 1 to below 100, "
                   f"e.g. 99 for the 99th percentile, not {raw}")
    if spec.positive and value <= 0:
        raise fail(f"{key} must be positive, not {raw}")
    if spec.limit is not None:
        top, why = spec.limit
        if (int(raw) if whole else value) > top:
            low, unit = "above 0" if spec.positive else "0", " ms" if spec.limit is _MS else ""
            top_text = f"{top:g}" if isinstance(top, float) else str(top)
            raise fail(f"{key} = {raw} is out of range ({why}): write a value from {low} to {top_text}{unit}")
    return value


def _strtoull_prefix(raw: str) -> str:
    digits = re.match(r"\+?(\d*)", raw).group(1)
    return digits or "0"


def _loadgen_accepts(tokens: list[str]) -> bool:
    """Whether LoadGen's line parser accepts these tokens (its '#', '=' and number rules)."""
    state = 0  # 0 = key, 1 = '=', 2 = value(s)
    for tok in tokens:
        if tok == "#" and state != 2:
            return True
        if state == 2:
            if not _LOADGEN_NUMBER.fullmatch(tok):
                return False
            continue
        if state == 1 and tok != "=":
            return False
        state += 1
    return True


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    by_lower = {c.lower(): c for c in choices}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None
