"""The submission copy of a results tree: what MLPerf's submission checker reads, and nothing else.

    python run.py package RESULTS_DIR OUT_DIR

``RESULTS_DIR`` is the ``--output`` of the runs; ``OUT_DIR`` (new) becomes the
``results/`` folder of a submission, ``<division>/<submitter>/results/``, laid
out as ``<system>/ssd-resnet34/<scenario>/``.

Refused (:class:`PackageRefused`, exit status 2, each folder named with why)
when a run folder holds anything but a finished run of a model (its
``run_status.json`` says INTERRUPTED, INCOMPLETE, FAILED, SIMULATED or
RUNNING; see harness/results/run_status.py), or an audit failed or is older than
the performance run it should cover. Nothing is written then.

File lists, from mlcommons/inference ``tools/submission/submission_checker``
(at b66003e1, its v6.0/v6.1 layout, where the audits and the measurements
sit in the scenario folder): ``accuracy/`` holds ``mlperf_log_summary.txt``,
``mlperf_log_detail.txt``, ``mlperf_log_accuracy.json`` and ``accuracy.txt``;
``performance/run_1/`` the summary and detail logs; ``TEST01/`` and
``TEST04/`` their ``verify_*.txt`` and ``performance/run_1/`` with exactly the
summary and detail logs (the checker rejects other files there), and
``TEST01/accuracy/`` the sampled log, ``accuracy.txt``,
``baseline_accuracy.txt`` and ``compliance_accuracy.txt`` (exactly these when
the byte-for-byte check did not pass); the scenario folder holds
``measurements.json`` (fields ``input_data_types``, ``retraining``,
``starting_weights_filename``, ``weight_data_types``,
``weight_transformations``), ``user.conf`` and ``README.md``.
Written here: the scenario's ``user.conf`` (the performance run's) and
``measurements.json`` (from what the run recorded it ran). Not copied: report.md,
pictures, latencies, harness.log, the harness's JSON records, find-peak runs,
anything this harness did not make. Left to the submitter (and listed): each
scenario's ``README.md``, ``systems/<system>.json`` and ``src/`` beside
``results/``.

Accuracy logs (mlcommons/inference ``tools/submission/truncate_accuracy_log.py``):
the copy keeps the first and last 4096 characters joined by ``"\\n\\n...\\n\\n"``,
and the sha256 of the ORIGINAL file is appended to the ``accuracy.txt``
beside it as ``hash=<hex>``; the checker takes a log under 10 KiB whose
``accuracy.txt`` has a hash as already truncated. Each log is streamed once,
never copied whole or held in memory; the original results are never modified.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness.compliance.verdicts import passes, verify_lines
from harness.results.layout import (
    ACCURACY_LOG,
    ACCURACY_TXT,
    DETAIL_LOG,
    RUN_DIRS,
    SUMMARY_LOG,
    VERIFY_ACCURACY,
    VERIFY_PERFORMANCE,
    find_runs,
    is_run_folder,
    read_status,
)
from harness.results.run_status import audit_is_stale, run_state
from ground.errors import InputError, OutputError
from ground.files import write_text_atomic

VIEWABLE_CHARS = 4096
MAX_TRUNCATED_BYTES = 10 * 1024
ELLIPSIS = "\n\n...\n\n"
LOGS = (SUMMARY_LOG, DETAIL_LOG)
# What is copied, relative to the scenario folder, per run mode (accuracy logs are truncated on the way).
COPIED = {"accuracy": [f"accuracy/{n}" for n in (*LOGS, ACCURACY_LOG, ACCURACY_TXT)],
          "performance": [f"performance/run_1/{n}" for n in LOGS],
          "TEST01": [f"TEST01/{n}" for n in (VERIFY_ACCURACY, VERIFY_PERFORMANCE)]
          + [f"TEST01/accuracy/{n}" for n in (ACCURACY_LOG, ACCURACY_TXT, "baseline_accuracy.txt",
                                              "compliance_accuracy.txt")]
          + [f"TEST01/performance/run_1/{n}" for n in LOGS],
          "TEST04": [f"TEST04/{VERIFY_PERFORMANCE}"] + [f"TEST04/performance/run_1/{n}" for n in LOGS]}
SUBMITTED = tuple(COPIED)


class PackageRefused(InputError, ValueError):
    """The results tree holds runs that are no submission; the message names each folder and why."""


@dataclass
class Truncated:
    source: Path
    target: Path
    original_bytes: int
    sha256: str


@dataclass
class Package:
    truncated: list[Truncated] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)      # made here from the runs' own files: to review
    todo: list[str] = field(default_factory=list)          # what the submitter must still add
    skipped: list[str] = field(default_factory=list)       # found and not copied, with why


def hash_head_tail(path: Path, keep: int = VIEWABLE_CHARS) -> tuple[str, int, bytes, bytes]:
    """(sha256 hex, size in bytes, first ``keep`` bytes, last ``keep`` bytes) of ``path``, in one streaming pass."""
    h = hashlib.sha256()
    head, tail, size = b"", b"", 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
            if len(head) < keep:
                head += block[:keep - len(head)]
            tail = (tail + block)[-keep:]
    return h.hexdigest(), size, head, tail


def truncated_text(head: bytes, tail: bytes, size: int, keep: int = VIEWABLE_CHARS) -> bytes:
    """The truncated log: unchanged when shorter than ``keep`` bytes, else head + ``ELLIPSIS`` + tail."""
    if size < keep:
        return head
    return head + ELLIPSIS.encode() + tail


def write_truncated_log(source: Path, target: Path, accuracy_txt: Path) -> Truncated:
    """Write the truncated copy of ``source`` to ``target`` and append ``hash=`` to ``accuracy_txt``.

    ``accuracy_txt`` is the submission copy's accuracy.txt (created holding only the hash if missing).
    """
    digest, size, head, tail = hash_head_tail(source)
    target.write_bytes(truncated_text(head, tail, size))
    previous = accuracy_txt.read_text() if accuracy_txt.is_file() else ""
    text = previous + ("\n" if previous else "") + f"hash={digest}\n"
    write_text_atomic(accuracy_txt, text)
    return Truncated(source, target, size, digest)


def _audit_failure(scenario: Path, test: str) -> str | None:
    """Why the ``test`` audit of ``scenario`` is no pass (its verify files), or None when it passed."""
    for name in (VERIFY_PERFORMANCE, VERIFY_ACCURACY) if test == "TEST01" else (VERIFY_PERFORMANCE,):
        lines = verify_lines(scenario / test / name) or []
        if not passes(name, lines):
            return f"{test}/{name} " + (f"says {lines[-1]!r}" if lines else "is missing: run `run.py verify`")
    if audit_is_stale(scenario, test):
        return f"{test} is older than the performance run, which it did not audit: rerun --mode submission"
    return None


def _check(scenarios: list[Path], results: Path) -> tuple[dict[Path, list[str]], list[str]]:
    """(scenario -> the modes to copy, refusals) for every scenario folder found."""
    plan, refusals = {}, []
    for scenario in scenarios:
        if len(scenario.relative_to(results).parts) != 3:
            refusals.append(f"{scenario} is not <system>/ssd-resnet34/<scenario> below {results}: give the "
                            "--output root of the runs")
            continue
        modes = [m for m in SUBMITTED if is_run_folder(scenario.joinpath(*RUN_DIRS[m]))]
        for mode in modes:
            state = run_state(scenario.joinpath(*RUN_DIRS[mode]))
            if not state.is_result:
                refusals.append(f"{scenario.joinpath(*RUN_DIRS[mode]).relative_to(results)} is {state.line()}")
            elif mode in ("TEST01", "TEST04") and (why := _audit_failure(scenario, mode)):
                refusals.append(f"{(scenario / mode).relative_to(results)}: {why}")
        plan[scenario] = modes
    return plan, refusals


def _measurements(scenario: Path, modes: list[str]) -> dict[str, str]:
    """The checker's measurements.json, from what the performance (else first) run recorded it ran."""
    source = scenario.joinpath(*RUN_DIRS["performance" if "performance" in modes else modes[0]])
    env = (read_status(source) or {}).get("environment") or {}
    precision = env.get("precision") or "fp32"
    return {"input_data_types": "uint8",                  # the QSL hands resized uint8 RGB images to the SUT
            "retraining": "no",
            "starting_weights_filename": Path(env["checkpoint"]).name if env.get("checkpoint") else "",
            "weight_data_types": precision,
            "weight_transformations": "none" if precision == "fp32" else
            f"cast to {precision} when loaded, BatchNorm kept in fp32"}


def package_submission(results: str | Path, out: str | Path) -> Package:
    """Copy the submission files of ``results`` to ``out`` (see the module docstring); returns what was done.

    Raises:
        PackageRefused: a run is not a finished run of a model, or an audit failed or is stale.
        OutputError: ``results`` is missing, ``out`` exists or lies inside it, or ``out`` cannot be written.
    """
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise OutputError(f"results folder {results} does not exist")
    if out.exists():
        raise OutputError(f"{out} already exists: choose a new folder for the submission copy")
    if out.resolve().is_relative_to(results.resolve()):
        raise OutputError(f"{out} is inside {results}: put the submission copy elsewhere")
    results = results.resolve()
    scenarios, foreign = find_runs(results)
    if not scenarios:
        raise PackageRefused(f"no runs made by this harness under {results}")
    plan, refusals = _check(scenarios, results)
    if refusals:
        raise PackageRefused(f"{results} holds runs that are no submission: " + "; ".join(refusals)
                             + ". Rerun them, or package a tree without them")
    done = Package(skipped=[f"{f.relative_to(results)} (not made by this harness)" for f in foreign])
    try:
        for scenario, modes in plan.items():
            _copy_scenario(scenario, modes, results, out, done)
        for system in sorted({s.relative_to(results).parts[0] for s in plan}):
            done.todo.append(f"systems/{system}.json beside results/: the system description (the checker's "
                             "SYSTEM_DESC_REQUIRED_FIELDS)")
        done.todo.append("src/ beside results/: the code that produced the results (this harness)")
    except OSError as e:
        raise OutputError(f"cannot write the submission copy in {out} ({e.strerror or e}); the original results "
                          f"in {results} are untouched") from None
    return done


def _copy_scenario(scenario: Path, modes: list[str], results: Path, out: Path, done: Package) -> None:
    rel = scenario.relative_to(results)
    target = out / rel
    for mode in modes:
        for name in COPIED[mode]:
            src, dst = scenario / name, target / name
            if not src.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name != ACCURACY_LOG:
                shutil.copyfile(src, dst)
        for log in (p for p in COPIED[mode] if p.endswith(ACCURACY_LOG) and (scenario / p).is_file()):
            dst = target / log
            done.truncated.append(write_truncated_log(scenario / log, dst, dst.parent / ACCURACY_TXT))
    if (scenario / "performance" / "find_peak").is_dir():
        done.skipped.append(f"{rel}/performance/find_peak (a find-peak search is not part of a submission)")
    if modes:
        user_conf = next((scenario.joinpath(*RUN_DIRS[m], "user.conf") for m in ("performance", *modes)
                          if m in modes and scenario.joinpath(*RUN_DIRS[m], "user.conf").is_file()), None)
        if user_conf is not None:
            shutil.copyfile(user_conf, target / "user.conf")
            done.written.append(target / "user.conf")
        measurements = _measurements(scenario, modes)
        write_text_atomic(target / "measurements.json", json.dumps(measurements, indent=2) + "\n")
        done.written.append(target / "measurements.json")
        if not measurements["starting_weights_filename"]:
            done.todo.append(f"{rel}/measurements.json: starting_weights_filename (the run used no checkpoint)")
    done.todo += [f"{rel}: no {m} run ({'/'.join(RUN_DIRS[m])}/)" for m in SUBMITTED if m not in modes]
    done.todo.append(f"{rel}/README.md: how to reproduce these results (the checker requires it, non-empty)")
