"""user.conf: every bad line named with its fix, and the LoadGen hints' precedence (config > user.conf > default)."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import run
from harness.results.loadgen_log import read_mllog
from harness.settings.config import HINT_DEFAULTS, RunConfig
from harness.settings.loadgen import make_test_settings, resolve_hints
from harness.settings.user_conf import SettingsError, parse_user_conf

ROOT = Path(__file__).resolve().parent.parent
MODEL = "ssd-resnet34"


def conf(tmp_path: Path, *lines: str, name: str = "u.conf") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def loadgen_reads(path: Path, scenario: str = "Server"):
    """LoadGen's own reading of a user file alone (no built-in conf): (return code, settings)."""
    import mlperf_loadgen as lg
    settings = lg.TestSettings()
    return settings.FromConfig(str(path), MODEL, scenario, 2), settings


def loadgen_reads_apart(path: Path, scenario: str, attr: str) -> tuple[int, float]:
    """:func:`loadgen_reads` in a separate process, for files LoadGen complains about: LoadGen keeps the errors a
    FromConfig call logs and writes them into the next run's detail log in the same process."""
    code = ("import sys, mlperf_loadgen as lg\ns = lg.TestSettings()\n"
            f"rc = s.FromConfig({str(path)!r}, {MODEL!r}, {scenario!r}, 2)\nprint(rc, float(s.{attr}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    rc, value = out.stdout.split()
    return int(rc), float(value)


# --- hints: explicit run config > user.conf > harness default ---------------------------------------------------

def test_user_conf_target_qps_is_used_when_the_config_gives_none(tmp_path):
    path = conf(tmp_path, f"{MODEL}.Server.target_qps = 500", f"{MODEL}.Offline.target_qps = 250",
                f"{MODEL}.SingleStream.target_latency = 0.25", f"{MODEL}.MultiStream.target_latency = 40")
    s = make_test_settings(path, "Server", "performance", RunConfig())
    assert s.server_target_qps == 500.0 and s.offline_expected_qps == 250.0
    assert s.single_stream_expected_latency_ns == 250 * 1000 and s.multi_stream_expected_latency_ns == 40 * 1000 * 1000


def test_explicit_hint_beats_user_conf_and_default_fills_the_rest(tmp_path):
    path = conf(tmp_path, f"{MODEL}.Server.target_qps = 500")
    s = make_test_settings(path, "Server", "performance", RunConfig(server_target_qps=20.0))
    assert s.server_target_qps == 20.0
    assert s.offline_expected_qps == HINT_DEFAULTS["offline_expected_qps"]
    assert s.single_stream_expected_latency_ns == HINT_DEFAULTS["singlestream_expected_latency_ms"] * 1000 * 1000
    assert s.multi_stream_expected_latency_ns == HINT_DEFAULTS["multistream_expected_latency_ms"] * 1000 * 1000


def test_hint_sources_are_named(tmp_path):
    path = conf(tmp_path, "# hints", f"{MODEL}.Server.target_qps = 500")
    hints = resolve_hints(RunConfig(offline_expected_qps=7.0), parse_user_conf(path))
    assert hints["server_target_qps"].value == 500.0
    assert hints["server_target_qps"].source == f"{path} line 2 ({MODEL}.Server.target_qps = 500)"
    assert (hints["offline_expected_qps"].value, hints["offline_expected_qps"].source) == (7.0, "run config")
    assert hints["multistream_expected_latency_ms"].source == "harness default"


LEVELS = {f"{MODEL}.Server.target_qps": 11.0, "*.Server.target_qps": 22.0, f"{MODEL}.*.target_qps": 33.0,
          "*.*.target_qps": 44.0}


@pytest.mark.parametrize("present", [c for n in range(1, 5) for c in itertools.combinations(LEVELS, n)])
def test_lookup_order_matches_loadgen(tmp_path, present):
    """Every mix of exact, model-wildcard, scenario-wildcard and double-wildcard lines: the value LoadGen reads wins."""
    path = conf(tmp_path, *(f"{k} = {LEVELS[k]:g}" for k in reversed(present)), "resnet50.Server.target_qps = 99")
    rc, lg_settings = loadgen_reads(path)
    expected = LEVELS[min(present, key=list(LEVELS).index)]   # the first level of LoadGen's order that is present
    assert rc == 0 and lg_settings.server_target_qps == expected
    assert make_test_settings(path, "Server", "performance", RunConfig()).server_target_qps == expected


def test_other_models_lines_are_ignored_but_checked(tmp_path):
    path = conf(tmp_path, "resnet50.Server.target_qps = 999", "bert-99.9.Offline.target_qps = 5")
    assert make_test_settings(path, "Server", "performance", RunConfig()).server_target_qps == \
        HINT_DEFAULTS["server_target_qps"]
    assert [e.model for e in parse_user_conf(path).entries] == ["resnet50", "bert-99.9"]
    bad = conf(tmp_path, "resnet50.Server.target_qpz = 999", name="bad.conf")
    with pytest.raises(SettingsError, match="did you mean 'target_qps'"):
        parse_user_conf(bad)


def test_run_records_user_conf_target_qps(capsys, synthetic_coco, tmp_path, fast_conf):
    """The reported case: a user.conf target_qps reaches LoadGen instead of the harness's 1 QPS."""
    user = conf(tmp_path, fast_conf.read_text().rstrip("\n"), f"{MODEL}.Server.target_qps = 200")
    out = tmp_path / "o"
    rc = run.main(["--backend", "null", "--threads", "1", "--data", str(synthetic_coco), "--cache-dir",
                   str(tmp_path / "cache"), "--image-size", "257", "257", "--scenario", "Server",
                   "--mode", "performance", "--output", str(out), "--user-conf", str(user)])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    folder = out / "default" / MODEL / "Server"
    assert read_mllog(folder / "performance" / "run_1" / "mlperf_log_detail.txt")["requested_server_target_qps"] == 200
    assert "target_qps=200" in (folder / "report.md").read_text()


# --- syntax and values ------------------------------------------------------------------------------------------

def test_accepted_layout(tmp_path):
    path = tmp_path / "ok.conf"
    path.write_bytes(b"# header\n\n   # indented comment\n#" + MODEL.encode() + b".Server.target_qps = 5\n"
                     b"#note\n" + MODEL.encode() + b".Offline.min_duration\t=\t77  \r\n"
                     b"*.*.min_query_count = 3\n")
    entries = parse_user_conf(path).entries
    assert [(e.model, e.scenario, e.key, e.value, e.line_no) for e in entries] == \
        [(MODEL, "Offline", "min_duration", 77.0, 6), ("*", "*", "min_query_count", 3.0, 7)]
    rc, s = loadgen_reads(path, "Offline")
    assert rc == 0 and s.min_duration_ms == 77 and s.min_query_count == 3 and s.server_target_qps == 1.0


@pytest.mark.parametrize("name", ["user.conf", "configs/short.conf"])
def test_project_confs_pass(name):
    assert len(parse_user_conf(ROOT / name).entries) > 10


BAD = [  # (line, fragment of the message)
    (f"{MODEL}.Offline.min_durationn = 100", "no key 'min_durationn'; did you mean 'min_duration'?"),
    (f"{MODEL}.Offlin.min_duration = 100", "unknown scenario 'Offlin'; did you mean 'Offline'?"),
    (f"{MODEL}.offline.min_duration = 100", "unknown scenario 'offline'; did you mean 'Offline'?"),
    (f"{MODEL}.Offline.min_duration = -5", "min_duration must be 0 or more, not -5"),
    (f"{MODEL}.Server.target_qps = 0", "target_qps must be positive, not 0"),
    (f"{MODEL}.Server.target_qps = -3", "target_qps must be positive, not -3"),
    (f"{MODEL}.Server.target_qps = 500 # peak", "LoadGen rejects a comment after the value"),
    (f"{MODEL}.Offline.min_duration=100", f"write '{MODEL}.Offline.min_duration = 100'"),
    (f"{MODEL}.Offline.min_duration : 100", "every line must be 'model.scenario.key = number'"),
    (f"{MODEL}.Offline.min_duration = 100 200", "one value per line"),
    (f"{MODEL}.Offline.min_duration =", "every line must be 'model.scenario.key = number'"),
    ("#note here", "write '# note here'"),
    ("min_duration = 100", "must be model.scenario.key"),
    (f"{MODEL}.Offline.min_duration = fast", "'fast' is not a plain decimal number"),
    (f"{MODEL}.Offline.min_duration = 1_000", "'1_000' is not a plain decimal number"),
    (f"{MODEL}.Offline.min_duration = 1e3", "so '1e3' would read as 1"),
    (f"{MODEL}.Offline.min_query_count = 010", "leading 0 as octal ('010'); write 10"),
    (f"{MODEL}.Server.target_latency = 0.5", "Server target_latency as whole milliseconds"),
    (f"{MODEL}.Server.target_latency_percentile = 0.99", "in percent"),
    (f"{MODEL}.Server.target_latency_percentile = 100", "in percent"),
    (f"{MODEL}.Offline.target_latency = 5", "only for SingleStream, MultiStream, Server"),
    (f"{MODEL}.SingleStream.samples_per_query = 4", "only for MultiStream"),
    (f"{MODEL}.MultiStream.samples_per_query = 0", "samples_per_query must be positive"),
    (f"{MODEL}.Server.coalesce_queries = 2", "write 0 (off) or 1 (on)"),
    (f"{MODEL}.*.qsl_rng_seed = 5", "only from its built-in mlperf.conf"),
    (f"{MODEL}.*.mode = 2", "from --mode"),
    (f"{MODEL}.Offline.min_duration = 99999999999999999999999",
     "min_duration = 99999999999999999999999 is out of range (LoadGen holds milliseconds as signed 64-bit "
     "nanoseconds): write a value from 0 to 9223372036854"),
    (f"{MODEL}.Offline.min_query_count = 9223372036854775808", "write a value from 0 to 9223372036854775807"),
    (f"{MODEL}.Server.max_async_queries = 2147483648", "write a value from 0 to 2147483647"),
    (f"{MODEL}.Server.target_qps = 1e400", "target_qps = 1e400 is out of range"),
    (f"{MODEL}.Server.target_latency = 9223372036855", "write a value from above 0 to 9223372036854 ms"),
    (f"{MODEL}.SingleStream.target_latency = 1e13", "write a value from above 0 to 9223372036854 ms"),
]


@pytest.mark.parametrize("line, message", BAD)
def test_bad_line_is_named_with_its_fix(tmp_path, line, message):
    path = conf(tmp_path, "# first", f"{MODEL}.*.min_query_count = 4", line)
    with pytest.raises(SettingsError) as e:
        make_test_settings(path, "Offline", "performance", RunConfig())
    text = str(e.value)
    assert f"{path}, line 3 ({line})" in text and message in text


@pytest.mark.parametrize("line, attr, meant", [
    (f"{MODEL}.Offline.min_duration = -5", "min_duration_ms", -5),
    (f"{MODEL}.Offline.min_duration = 1e3", "min_duration_ms", 1000),
    (f"{MODEL}.Offline.min_duration = 010", "min_duration_ms", 10),
    (f"{MODEL}.Offline.min_duration=100", "min_duration_ms", 100),
    (f"{MODEL}.Offline.min_durationn = 100", "min_duration_ms", 100),
    (f"{MODEL}.Offlin.min_duration = 100", "min_duration_ms", 100),
    (f"{MODEL}.Server.target_latency = 0.5", "server_target_latency_ns", 500_000),
    (f"{MODEL}.Server.target_qps = 500 # peak", "server_target_qps", 500),
    (f"{MODEL}.Offline.min_duration = 99999999999999999999999", "min_duration_ms", 99999999999999999999999),
])
def test_lines_loadgen_misreads_are_rejected(tmp_path, line, attr, meant):
    """LoadGen alone fails on these lines or silently reads something else than they say; the parser stops them."""
    path = conf(tmp_path, line)
    rc, value = loadgen_reads_apart(path, "Offline", attr)
    assert rc != 0 or value != meant
    with pytest.raises(SettingsError, match=r"line 1 \("):
        parse_user_conf(path)


def test_bad_user_conf_via_run_py_is_one_line(capsys, synthetic_coco, tmp_path):
    path = conf(tmp_path, f"{MODEL}.Offline.min_durationn = 100")
    rc = run.main(["--data", str(synthetic_coco), "--backend", "null", "--user-conf", str(path),
                   "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "line 1" in err and "did you mean 'min_duration'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_out_of_range_value_is_refused_before_anything_runs(capsys, synthetic_coco, tmp_path):
    """LoadGen reads 99999999999999999999999 as 2^64-1 ms and crashed the run; it is refused in one line."""
    path = conf(tmp_path, f"{MODEL}.*.min_query_count = 4", f"{MODEL}.Offline.min_duration = 99999999999999999999999")
    rc = run.main(["--data", str(synthetic_coco), "--backend", "null", "--user-conf", str(path),
                   "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{path}, line 2 (" in err and "min_duration = 99999999999999999999999 is out of range" in err
    assert "from 0 to 9223372036854" in err and not (tmp_path / "o").exists()


def test_a_file_with_no_line_for_this_model_is_warned_about_naming_the_model(tmp_path, capsys, caplog,
                                                                               synthetic_coco):
    """LoadGen ignores every line of another model, so its defaults (600 s) would apply without a word."""
    path = conf(tmp_path, "# copied from the resnet50 submission", "resnet50.Offline.min_duration = 2000",
                "resnet50.*.performance_sample_count_override = 64")
    rc = run.main(["--scenario", "Offline", "--mode", "accuracy", "--backend", "null", "--data", str(synthetic_coco),
                   "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"), "--user-conf", str(path),
                   "--image-size", "257", "257", "--num-classes", "7"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(path) in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "none of its 2 settings applies to ssd-resnet34, the model this run uses (its lines name resnet50)" \
        in warned[0] and "LoadGen's defaults apply" in warned[0]


@pytest.mark.parametrize("lines, warned", [([f"{MODEL}.Server.target_qps = 5"], False),
                                           (["*.Offline.min_duration = 10"], False), ([], True)])
def test_only_a_file_with_no_line_for_this_model_or_for_any_is_warned_about(tmp_path, lines, warned):
    from harness.settings.user_conf import unused_file_warning
    text = unused_file_warning(parse_user_conf(conf(tmp_path, "resnet50.Server.target_qps = 9", *lines)), MODEL)
    assert (text is not None) == warned


def test_a_misspelt_model_name_gets_a_suggestion(tmp_path):
    from harness.settings.user_conf import unused_file_warning
    text = unused_file_warning(parse_user_conf(conf(tmp_path, "ssd-resnet-34.Offline.min_duration = 10")), MODEL)
    assert "did you mean ssd-resnet34?" in text
