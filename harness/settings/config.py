"""Run configuration: one frozen dataclass per concern, read from a TOML file.

A config file in ``configs/`` has up to three tables, ``[model]``, ``[data]``
and ``[run]``, whose keys are the fields below. Precedence: dataclass default,
then the file, then command-line overrides. Every key is declared once here,
with its meaning and units; an unknown key or a value of the wrong kind is a
:class:`ConfigError` that names the file and the key.

The seed's flags map onto ``[model]`` fields one to one:
``--image-size A B`` -> ``image_size``, ``--dboxes-scale`` -> ``dboxes_scale``,
``--dboxes-steps`` -> ``dboxes_steps``, ``--small-mask`` / ``--large-mask`` ->
``small_mask`` / ``large_mask``, ``--use-filter`` -> ``use_filter``,
``--use-fp16`` -> ``precision = "fp16"``, ``--model`` -> ``checkpoint``.

One key is the command line's alone: ``trust_pickle`` (``--trust-pickle``) lets a
checkpoint run code as it is read, so a config file that sets it true is refused,
rather than a shared or downloaded file switching it on unseen.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.model_config import (
    NUM_FEATURE_MAPS,
    ModelConfig,
    check_choice,
)
from harness.settings.rules import RULES
from harness.settings.checkpoint_path import checkpoint_places
from ground.errors import ConfigError
from ground.files import write_text_atomic
from ground.names import path_name_problem

SCENARIOS = ("SingleStream", "MultiStream", "Offline", "Server")
MODES = ("accuracy", "performance", "submission", "find-peak")
DEVICES = ("auto", "cpu", "cuda")
BATCH_INVARIANT = ("auto", "on", "off")
EXECUTORS = ("local", "ray")


# The harness's own expected-QPS / expected-latency hints, used when neither the config nor user.conf gives one.
HINT_DEFAULTS = {"offline_expected_qps": 10.0, "server_target_qps": 1.0,
                 "singlestream_expected_latency_ms": 500.0, "multistream_expected_latency_ms": 4000.0}


@dataclass(frozen=True)
class DataConfig:
    """Where the COCO-layout images and their preprocessed cache live."""

    data_dir: str | None = None            # folder with annotations/ and val2017/ (or images/val2017/)
    annotation_file: str | None = None     # explicit annotation JSON; default <data_dir>/annotations/instances_val2017.json
    cache_dir: str | None = None           # preprocessed uint8 cache; default <data_dir>/ssd_cache
    max_images: int | None = None          # use only the first N images of the annotation file
    skip_bad_images: bool = False          # skip unreadable images (recorded in the cache metadata) instead of failing


@dataclass(frozen=True)
class RunConfig:
    """How LoadGen drives the system under test."""

    scenario: str = "Offline"              # see SCENARIOS
    mode: str = "performance"              # see MODES
    # The MLPerf round whose rules the runs follow (harness/settings/rules.py): its seeds, durations,
    # query counts, latency bounds and, in submission mode, its compliance audits. "none" = LoadGen's own.
    rules: str = "v2.0"
    device: str = "auto"                   # "auto" = cuda when available, else cpu
    threads: int = 0                       # torch intra-op threads on CPU; 0 = torch's default
    # Run each image of a batch on its own: "auto" = on for a CPU, off for CUDA; "on"; "off". On a CPU the
    # batched convolution differs from a single-image one in the last bits, so a sample's response bytes
    # would depend on its batch and TEST01's byte-for-byte comparison of accuracy and performance logs
    # would fail; per-image execution keeps them identical. "off" trades that for batched throughput.
    batch_invariant: str = "auto"
    batch_size: int = 8                    # Offline batch size
    server_max_batch: int = 8              # Server: most samples per batch
    server_max_wait_ms: float = 5.0        # Server: longest a sample waits for a batch to fill
    multistream_samples: int = 8           # samples per MultiStream query
    # LoadGen's expected-QPS / expected-latency hints. None = user.conf's value for ssd-resnet34 and the
    # scenario (Offline/Server target_qps, SingleStream/MultiStream target_latency), else HINT_DEFAULTS.
    offline_expected_qps: float | None = None       # Offline hint, samples/s
    server_target_qps: float | None = None          # Server arrival rate, queries/s
    singlestream_expected_latency_ms: float | None = None  # SingleStream hint, ms
    multistream_expected_latency_ms: float | None = None   # MultiStream hint, ms
    output_dir: str = "results"            # root of the submission layout
    system_name: str = "default"           # <system> folder name in the submission layout (ground/names.py)
    user_conf: str = "user.conf"           # LoadGen settings file
    # Where the workers run: "local" = in this process (one per local device); "ray" = one Ray actor per
    # worker, each holding a whole backend on one device of one node of a Ray cluster (backends/ray/).
    executor: str = "local"
    ray_address: str | None = None         # "host:port" of a running cluster's head, or "auto"; None = start a local one
    ray_workers: int | None = None         # actors to start; None = one per GPU of the cluster, else one per node
    # Seconds a worker (local or Ray) may take for one call before it counts as lost; None = derived from
    # the scenario (Server: 10 x the latency bound, at least 5 s; others 600 s). Flag: --call-timeout.
    ray_call_timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_choice("run.scenario", self.scenario, SCENARIOS)
        check_choice("run.mode", self.mode, MODES)
        check_choice("run.rules", self.rules, tuple(RULES))
        check_choice("run.device", self.device, DEVICES)
        check_choice("run.batch_invariant", self.batch_invariant, BATCH_INVARIANT)
        check_choice("run.executor", self.executor, EXECUTORS)
        problem = path_name_problem(self.system_name)
        if problem:   # it names a folder under output_dir: a path here would write (and clear) outside it
            raise ConfigError(f"run.system_name {self.system_name!r} {problem}")
        if self.executor != "ray":
            for name in ("ray_address", "ray_workers"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"run.{name} needs run.executor = \"ray\" (it is {self.executor!r})")
        if self.ray_workers is not None and (not isinstance(self.ray_workers, int) or self.ray_workers < 1):
            raise ConfigError(f"run.ray_workers must be a whole number, at least 1, got {self.ray_workers!r}")
        if self.ray_call_timeout_s is not None and (not _is_number(self.ray_call_timeout_s)
                                                    or self.ray_call_timeout_s <= 0):
            raise ConfigError(f"run.ray_call_timeout_s must be a positive number of seconds, "
                              f"got {self.ray_call_timeout_s!r}")
        for name in ("batch_size", "server_max_batch", "multistream_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be at least 1, got {getattr(self, name)}")
        if not _is_number(self.server_max_wait_ms) or self.server_max_wait_ms < 0:
            raise ConfigError(f"run.server_max_wait_ms must be a number of milliseconds, 0 or more "
                              f"(0 = never wait for a batch to fill), got {self.server_max_wait_ms!r}")
        for name in HINT_DEFAULTS:
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ConfigError(f"run.{name} must be a positive number (or left out to use user.conf's value), "
                                  f"got {value!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"model": dataclasses.asdict(self.model),
                "data": dataclasses.asdict(self.data),
                "run": dataclasses.asdict(self.run)}

    def save(self, path: str | Path) -> None:
        """Write the fully resolved config as JSON (next to the LoadGen logs), with the working directory
        the run started in (``cwd``), against which its relative paths resolve."""
        write_text_atomic(Path(path), json.dumps({**self.to_dict(), "cwd": os.getcwd()}, indent=2) + "\n")


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "run": RunConfig}
# List-valued keys, with what each must be for error messages.
_MASK = f"a list of {NUM_FEATURE_MAPS} values of 0 or 1 such as [1, 1, 1, 1, 1, 1]"
_TUPLE_FIELDS = {"image_size": "a list of two integers such as [300, 600] (S0, S1 in pixels; equal = single scale)",
                 "dboxes_steps": f"a list of {NUM_FEATURE_MAPS} integers such as [8, 16, 32, 64, 100, 300]",
                 "small_mask": _MASK, "large_mask": _MASK}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a scalar field's declared type asks of a value, and how an error message says it.
_SCALARS = {"int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
            "float": ("a number", _is_number),
            "bool": ("true or false", lambda v: isinstance(v, bool)),
            "str": ("a string in quotes", lambda v: isinstance(v, str))}


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML: strings as "the string '7'", booleans as true/false."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _unknown_keys(unknown: list[str], known: set[str]) -> str:
    out = []
    for key in unknown:
        guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        out.append(f"{key} (did you mean {guess[0]}?)" if guess else key)
    return ", ".join(out)


def _check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the key whose value is not of its field's declared type."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for k, v in values.items():
        if v is None:
            continue
        if k in _TUPLE_FIELDS:
            if not isinstance(v, (list, tuple)) or not all(_is_number(x) for x in v):
                raise ConfigError(f"{where}: {k} must be {_TUPLE_FIELDS[k]}, got {_shown(v)}")
            continue
        kind = declared[k].replace(" | None", "")
        if kind in _SCALARS and not _SCALARS[kind][1](v):
            raise ConfigError(f"{where}: {k} must be {_SCALARS[kind][0]}, got {_shown(v)}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {_unknown_keys(unknown, known)}; known keys: "
                          f"{', '.join(sorted(known))}")
    _check_types(cls, values, where)
    clean = {k: (tuple(v) if k in _TUPLE_FIELDS and v is not None else v) for k, v in values.items()}
    try:
        return cls(**clean)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # e.g. comparing a string with an int
        raise ConfigError(f"{where}: a value has the wrong type ({e})") from None


def config_file_table(path: str | Path | None, section: str) -> dict[str, Any]:
    """The keys and values a (valid) config file sets in ``section``; empty without a file."""
    if path is None:
        return {}
    table = tomllib.loads(Path(path).read_text()).get(section, {})
    return dict(table) if isinstance(table, dict) else {}


def model_keys_in_file(path: str | Path | None) -> dict[str, str]:
    """{model key: where the config file ``path`` sets it}: {"image_size": "x.toml [model] image_size = [300, 600]"}.

    None (no file) gives {}; :func:`harness.settings.cli.model_keys_given` adds the flags on top.
    """
    return {k: f"{path} [model] {k} = {v!r}" for k, v in config_file_table(path, "model").items()}


def load_config(path: str | Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read ``path`` (TOML) if given, then apply ``overrides`` {section: {key: value}}.

    Override values of ``None`` are ignored, so parsed CLI flags can be passed as they are.
    """
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; give a TOML file such as configs/demo.toml")
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        extra = sorted(set(data) - set(_SECTIONS))
        if extra:
            raise ConfigError(f"{path}: unknown table(s) {', '.join(extra)}; use [model], [data] and [run]")
        for name, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: '{name}' must be a table like [{name}]")
            raw[name].update(table)
        if raw["model"].get("trust_pickle", False) is not False:
            raise ConfigError(f"{path} [model]: trust_pickle = {raw['model']['trust_pickle']!r} is refused in a "
                              "config file: reading a whole pickled module runs code from the checkpoint, so only "
                              "the command line may allow it; remove the line and pass --trust-pickle if you trust "
                              "the checkpoint's source")
        if raw["model"].get("checkpoint") is not None and not isinstance(raw["model"]["checkpoint"], str):
            raise ConfigError(f"{path} [model]: checkpoint must be a path in quotes, "
                              f"got {raw['model']['checkpoint']!r}")
        if raw["model"].get("checkpoint"):
            found = next((p for p in checkpoint_places(raw["model"]["checkpoint"], path) if p.exists()), None)
            if found is not None:
                raw["model"]["checkpoint"] = str(found)
    overridden = False
    for name, table in (overrides or {}).items():
        if name == "cwd":   # a saved config.json's record of where its run started: not a setting
            continue
        if name not in _SECTIONS:
            raise ConfigError(f"override section {name!r} is not one of {', '.join(_SECTIONS)}")
        given = {k: v for k, v in table.items() if v is not None}
        raw[name].update(given)
        overridden = overridden or bool(given)
    if overridden:
        where = f"{where} + command line"
    return Config(**{name: _build(cls, raw[name], f"{where} [{name}]") for name, cls in _SECTIONS.items()})
