"""The submission tree of a results tree: the MLPerf round's layout, what its checker reads, nothing else.

    python run.py package RESULTS_DIR OUT_DIR [--submitter ORG] [--division closed] [--implementation NAME]

``RESULTS_DIR`` is the ``--output`` of ``--mode submission`` runs; ``OUT_DIR``
(new) becomes the root of a submission, laid out as MLPerf Inference v2.0's
checker walks it (mlcommons/inference tag v2.0, commit
33894a19c4af6207f7cfdda75f84570f04836de5, ``tools/submission/submission-checker.py``
``check_results_dir``; the same in v4.0's ``submission_checker.py``, commit
e39003a9c4c89a2215db0ca57ad7a57b16f9a785), with ``S = <system>/ssd-resnet34/<scenario>``:

    <division>/<submitter>/results/S/accuracy/         summary, detail, truncated accuracy log, accuracy.txt
    <division>/<submitter>/results/S/performance/run_1/ summary, detail
    <division>/<submitter>/measurements/S/             <system>_<implementation>_<scenario>.json,
                                                       user.conf, mlperf.conf (the round's settings applied)
    <division>/<submitter>/compliance/S/<TEST>/         verify_*.txt, performance/run_1/ (summary, detail),
                                                       TEST01: accuracy/ (truncated log, accuracy.txt and,
                                                       only after the mAP fallback, baseline_accuracy.txt and
                                                       compliance_accuracy.txt)
    <division>/<submitter>/systems/<system>.json       harness/compliance/system_desc.py

Compliance folders: each audit of the runs' rules profile. For v2.0 that is
TEST01, TEST04-A (with the TEST04-A/TEST04-B verdict), TEST04-B (logs only,
as v2.0's run_verification.py leaves it) and TEST05; and ``TEST04``, the
TEST04-B run again with its check against the performance run, because later
checkers run with ``--version v2.0`` ask for TEST04 instead of TEST04-A/B.

Refused (:class:`PackageRefused`, exit status 2, each folder named with why)
when a run folder holds anything but a finished run of a model (its
``run_status.json`` says INTERRUPTED, INCOMPLETE, FAILED, SIMULATED or
RUNNING; see harness/results/run_status.py), the runs of a scenario followed
different rules or none of a round's (LoadGen's own seeds, which every
checker rejects), or an audit failed or is older than the performance run
(unless ``--allow-failed-audits``: then the audit is copied with its failing
verdict, which MLPerf's checker reports, and the command says so). Nothing is
written then. Left to the submitter, and printed: each
measurements folder's ``README.md``, ``code/ssd-resnet34/<implementation>/``
and the system description's fields marked ``TO BE FILLED BY THE SUBMITTER``.
The original results are never modified.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness.compliance.system_desc import (
    SYSTEM_STATUSES,
    SYSTEM_TYPES,
    fields_to_fill,
    implementation_description,
    system_description,
)
from harness.compliance.truncate import Truncated, write_truncated_log
from harness.compliance.verdicts import passes, verify_lines
from harness.results.layout import (
    ACCURACY_LOG,
    ACCURACY_TXT,
    BASELINE_ACCURACY,
    COMPLIANCE_ACCURACY,
    DETAIL_LOG,
    RUN_DIRS,
    SUMMARY_LOG,
    VERIFY_ACCURACY,
    VERIFY_PERFORMANCE,
    find_runs,
    is_run_folder,
    read_status,
    run_rules,
)
from harness.results.run_status import audit_is_stale, run_state
from harness.settings.rules import AUDITS, RULES
from ground.errors import InputError, OutputError
from ground.files import write_text_atomic

LOGS = (SUMMARY_LOG, DETAIL_LOG)
DIVISIONS = ("closed", "open")
DEFAULT_SUBMITTER = "my_org"
DEFAULT_IMPLEMENTATION = "pytorch"
MODEL = "ssd-resnet34"
# The verify files that must say PASS for an audit to be packaged (TEST04-B's is its later-round TEST04 check).
VERIFY_FILES = {test: (VERIFY_ACCURACY, VERIFY_PERFORMANCE) if test == "TEST01" else (VERIFY_PERFORMANCE,)
                for test in AUDITS}


class PackageRefused(InputError, ValueError):
    """The results tree holds runs that are no submission; the message names each folder and why."""


@dataclass
class Package:
    root: Path | None = None                               # <out>/<division>/<submitter>
    truncated: list[Truncated] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)      # made here from the runs' own files: to review
    todo: list[str] = field(default_factory=list)          # what the submitter must still add
    skipped: list[str] = field(default_factory=list)       # found and not copied, with why


def _audit_failure(scenario: Path, test: str) -> str | None:
    """Why the ``test`` audit of ``scenario`` is no pass (its verify files), or None when it passed."""
    folder = scenario.joinpath(*RUN_DIRS[test])
    for name in VERIFY_FILES[test]:
        lines = verify_lines(folder / name) or []
        if not passes(name, lines):
            return f"{test}/{name} " + (f"says {lines[-1]!r}" if lines else "is missing: run `run.py verify`")
    if audit_is_stale(scenario, test):
        return f"{test} is older than the performance run, which it did not audit: rerun --mode submission"
    return None


def _check(scenarios: list[Path], results: Path,
           failed_audits: list[str] | None = None) -> tuple[dict[Path, tuple[str, list[str]]], list[str]]:
    """(scenario -> (rules, the modes to copy), refusals) for every scenario folder found.

    ``failed_audits``: where an audit that is no pass goes when it is to be packaged anyway (else a refusal).
    """
    plan, refusals = {}, []
    for scenario in scenarios:
        rel = scenario.relative_to(results)
        if len(rel.parts) != 3:
            refusals.append(f"{scenario} is not <system>/{MODEL}/<scenario> below {results}: give the --output "
                            "root of the runs")
            continue
        modes = [m for m in ("accuracy", "performance", *AUDITS) if is_run_folder(scenario.joinpath(*RUN_DIRS[m]))]
        rules = {m: run_rules(scenario.joinpath(*RUN_DIRS[m])) for m in modes}
        names = sorted(set(rules.values()))
        if len(names) > 1:
            refusals.append(f"{rel}: its runs followed different rules ({', '.join(f'{m} {r}' for m, r in rules.items())}"
                            "): rerun them all with one --rules")
            continue
        name = names[0] if names else "none"
        if RULES[name].checker_version is None:
            refusals.append(f"{rel}: its runs followed --rules {name} (LoadGen's own seeds, which MLPerf's checkers "
                            "reject): rerun with --rules v2.0")
            continue
        for mode in modes:
            state = run_state(scenario.joinpath(*RUN_DIRS[mode]))
            if not state.is_result:
                refusals.append(f"{scenario.joinpath(*RUN_DIRS[mode]).relative_to(results)} is {state.line()}")
            elif mode in AUDITS and (why := _audit_failure(scenario, mode)):
                (refusals if failed_audits is None else failed_audits).append(f"{rel / mode}: {why}")
        plan[scenario] = (name, modes)
    return plan, refusals


def package_submission(results: str | Path, out: str | Path, division: str = "closed",
                       submitter: str = DEFAULT_SUBMITTER, implementation: str = DEFAULT_IMPLEMENTATION,
                       status: str = "rdi", system_type: str = "edge", allow_failed_audits: bool = False) -> Package:
    """Write the submission tree of ``results`` into ``out`` (see the module docstring); returns what was done.

    Raises:
        PackageRefused: a run is not a finished run of a model, the rules are not a round's, or an audit
            failed or is stale; a bad division, submitter, implementation, status or system type.
        OutputError: ``results`` is missing, ``out`` exists or lies inside it, or ``out`` cannot be written.
    """
    results, out = Path(results), Path(out)
    for what, value, allowed in (("division", division, DIVISIONS), ("status", status, SYSTEM_STATUSES),
                                 ("system type", system_type, SYSTEM_TYPES)):
        if value not in allowed:
            raise PackageRefused(f"{what} {value!r} is not one MLPerf's checker takes: use {', '.join(allowed)}")
    for what, value in (("submitter", submitter), ("implementation", implementation)):
        if not value or "/" in value or value.startswith("."):
            raise PackageRefused(f"{what} {value!r} must be a plain folder name")
    if not results.is_dir():
        raise OutputError(f"results folder {results} does not exist")
    if out.exists():
        raise OutputError(f"{out} already exists: choose a new folder for the submission")
    if out.resolve().is_relative_to(results.resolve()):
        raise OutputError(f"{out} is inside {results}: put the submission elsewhere")
    results = results.resolve()
    scenarios, foreign = find_runs(results)
    if not scenarios:
        raise PackageRefused(f"no runs made by this harness under {results}")
    failed: list[str] | None = [] if allow_failed_audits else None
    plan, refusals = _check(scenarios, results, failed)
    if refusals:
        raise PackageRefused(f"{results} holds runs that are no submission: " + "; ".join(refusals)
                             + ". Rerun them, or package a tree without them")
    done = Package(root=out / division / submitter,
                   skipped=[f"{f.relative_to(results)} (not made by this harness)" for f in foreign])
    done.todo += [f"{what}: packaged as it is (--allow-failed-audits); MLPerf's checker reports it: rerun "
                  "--mode submission on a quiet machine" for what in failed or []]
    try:
        systems: dict[str, Path] = {}
        for scenario, (rules, modes) in plan.items():
            _copy_scenario(scenario, rules, modes, implementation, results, done)
            systems.setdefault(scenario.relative_to(results).parts[0], scenario)
        for system, scenario in sorted(systems.items()):
            _write_system(scenario, system, submitter, division, status, system_type, done)
        done.todo.append(f"{done.root / 'code' / MODEL / implementation}/: the code that produced the results "
                         "(this harness) and how to run it")
    except OSError as e:
        raise OutputError(f"cannot write the submission in {out} ({e.strerror or e}); the original results "
                          f"in {results} are untouched") from None
    return done


def _environment(scenario: Path, modes: list[str]) -> dict:
    source = scenario.joinpath(*RUN_DIRS["performance" if "performance" in modes else modes[0]])
    return (read_status(source) or {}).get("environment") or {}


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _copy_logs(run: Path, target: Path) -> None:
    for name in LOGS:
        if (run / name).is_file():
            _copy(run / name, target / name)


def _copy_scenario(scenario: Path, rules: str, modes: list[str], implementation: str, results: Path,
                   done: Package) -> None:
    rel = scenario.relative_to(results)
    system, _, name = rel.parts
    res, meas, comp = (done.root / part / rel for part in ("results", "measurements", "compliance"))
    if "accuracy" in modes:
        acc = scenario.joinpath(*RUN_DIRS["accuracy"])
        _copy_logs(acc, res / "accuracy")
        if (acc / ACCURACY_TXT).is_file():
            _copy(acc / ACCURACY_TXT, res / "accuracy" / ACCURACY_TXT)
        if (acc / ACCURACY_LOG).is_file():
            done.truncated.append(write_truncated_log(acc / ACCURACY_LOG, res / "accuracy" / ACCURACY_LOG,
                                                      res / "accuracy" / ACCURACY_TXT))
    if "performance" in modes:
        _copy_logs(scenario.joinpath(*RUN_DIRS["performance"]), res / "performance" / "run_1")
    if (scenario / "performance" / "find_peak").is_dir():
        done.skipped.append(f"{rel}/performance/find_peak (a find-peak search is not part of a submission)")
    for test in (m for m in modes if m in AUDITS):
        _copy_audit(scenario.joinpath(*RUN_DIRS[test]), test, comp / test, done)
    if "TEST04-B" in modes and "TEST04" not in modes:   # later checkers' name for the same audit
        _copy_audit(scenario.joinpath(*RUN_DIRS["TEST04-B"]), "TEST04", comp / "TEST04", done)
    env = _environment(scenario, modes)
    meas.mkdir(parents=True, exist_ok=True)
    user_conf = next((scenario.joinpath(*RUN_DIRS[m], "user.conf") for m in ("performance", *modes)
                      if m in modes and scenario.joinpath(*RUN_DIRS[m], "user.conf").is_file()), None)
    if user_conf is not None:
        _copy(user_conf, meas / "user.conf")
    write_text_atomic(meas / "mlperf.conf", RULES[rules].mlperf_conf())
    imp = implementation_description(env)
    imp_file = meas / f"{system}_{implementation}_{name}.json"
    write_text_atomic(imp_file, json.dumps(imp, indent=2) + "\n")
    done.written += [p for p in (meas / "user.conf", meas / "mlperf.conf", imp_file) if p.is_file()]
    done.todo += [f"{imp_file}: {k}" for k in fields_to_fill(imp)]
    done.todo.append(f"{meas / 'README.md'}: how to reproduce these results (the checker requires it)")
    wanted = ("accuracy", "performance", *RULES[rules].audits)
    done.todo += [f"{rel}: no {m} run ({'/'.join(RUN_DIRS[m])}/): rerun --mode submission" for m in wanted
                  if m not in modes]


def _copy_audit(run: Path, test: str, target: Path, done: Package) -> None:
    """One audit's compliance folder from its run folder ``run`` (see the module docstring)."""
    _copy_logs(run, target / "performance" / "run_1")
    if test != "TEST04-B":   # v2.0's TEST04-A holds the TEST04-A/TEST04-B verdict; TEST04-B none
        _copy(run / VERIFY_PERFORMANCE, target / VERIFY_PERFORMANCE)
    if test != "TEST01":
        return
    _copy(run / VERIFY_ACCURACY, target / VERIFY_ACCURACY)
    byte_pass = passes(VERIFY_ACCURACY, [line for line in verify_lines(run / VERIFY_ACCURACY) or []
                                          if line.startswith("TEST ")])
    acc = target / "accuracy"
    acc.mkdir(parents=True, exist_ok=True)
    if not byte_pass:   # the mAP fallback was used: the checker asks for exactly these files then
        for name in (BASELINE_ACCURACY, COMPLIANCE_ACCURACY, ACCURACY_TXT):
            if (run / name).is_file():
                _copy(run / name, acc / name)
    done.truncated.append(write_truncated_log(run / ACCURACY_LOG, acc / ACCURACY_LOG, acc / ACCURACY_TXT))


def _write_system(scenario: Path, system: str, submitter: str, division: str, status: str, system_type: str,
                  done: Package) -> None:
    modes = [m for m in ("performance", "accuracy") if is_run_folder(scenario.joinpath(*RUN_DIRS[m]))]
    desc = system_description(_environment(scenario, modes or ["performance"]), system, submitter, division,
                              status, system_type)
    path = done.root / "systems" / f"{system}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(desc, indent=2) + "\n")
    done.written.append(path)
    done.todo += [f"{path}: {k}" for k in fields_to_fill(desc)]
    done.todo.append(f"{path}: status is {status!r} and system_type {system_type!r} (run.py package --status, "
                     "--system-type): check them")
