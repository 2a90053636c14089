"""report.md: written after every run, rebuilt identically from disk by `run.py report DIR`; `run.py package`."""
from __future__ import annotations

import re

import run
from harness.accuracy.coco import STAT_NAMES

NULL = ["--backend", "null", "--num-classes", "7", "--image-size", "257", "257",
        "--offline-expected-qps", "10000", "--batch-size", "8"]


def _run(capsys, argv):
    rc = run.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_report_has_the_run_and_is_rebuilt_identically(tmp_path, synthetic_coco, fast_conf, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
            "--user-conf", str(fast_conf), *NULL]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "detections.png").write_bytes(b"")          # a demo picture at the output root
    for mode in ("accuracy", "performance"):
        rc, out, err = _run(capsys, ["--scenario", "Offline", "--mode", mode, *base])
        assert rc == 0, err
    scen = tmp_path / "o" / "default" / "ssd-resnet34" / "Offline"
    report = (scen / "report.md").read_text()
    assert report.startswith("# Offline: default / ssd-resnet34")
    assert "- **model**: " in report and "backbone=resnet34" in report and "image_size=[257, 257]" in report
    assert "min_duration_ms=500" in report                                    # LoadGen's effective settings
    assert re.search(r"- Result: \*\*SIMULATED\*\*, not a result \(LoadGen's own verdict on the logs: (VALID|INVALID)",
                     report)                                                  # the null backend ran no model
    assert re.search(r"- Throughput: \d+\.\d\d samples/s", report)
    assert "| latency | min | mean | p50 | p90 | p95 | p97 | p99 | p99.9 | max |" in report
    accuracy_txt = (scen / "accuracy" / "accuracy.txt").read_text().splitlines()
    assert f"- Accuracy: **SIMULATED**, not a result ({accuracy_txt[0]} of this simulated run)" in report
    for name in STAT_NAMES:                                                   # the 12 COCO statistics
        assert "| " + " ".join(name.split()).replace("|", "\\|") + " | " in report
    assert "![latency histogram](performance/run_1/latency.png)" in report
    assert (scen / "performance" / "run_1" / "latency.png").stat().st_size > 0
    # Rebuild from a run folder, after deleting the report and the picture: the same text, the picture redrawn.
    (scen / "report.md").unlink()
    (scen / "performance" / "run_1" / "latency.png").unlink()
    rc, out, _ = _run(capsys, ["report", str(scen / "performance" / "run_1")])
    assert rc == 0 and out.strip() == str(scen / "report.md")
    rebuilt = (scen / "report.md").read_text()
    assert rebuilt == report and "![detections](../../../detections.png)" in rebuilt
    assert (scen / "performance" / "run_1" / "latency.png").stat().st_size > 0


def test_report_of_a_root_covers_every_scenario(tmp_path, synthetic_coco, fast_conf, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
            "--user-conf", str(fast_conf), "--mode", "performance", *NULL]
    for scenario in ("SingleStream", "Offline"):
        assert _run(capsys, ["--scenario", scenario, *base])[0] == 0
    rc, out, _ = _run(capsys, ["report", str(tmp_path / "o")])
    assert rc == 0 and [p.split("/")[-2] for p in out.split()] == ["Offline", "SingleStream"]
    rc, _, err = _run(capsys, ["report", str(tmp_path / "nowhere")])
    assert rc == 2 and "is not a folder of results" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, ["report", str(tmp_path / "cache")])
    assert rc == 2 and "no runs made by this harness under" in err


def test_package_command(tmp_path, synthetic_coco, fast_conf, capsys, monkeypatch):
    import harness.run.backend
    from backends.null import NullBackend
    monkeypatch.chdir(tmp_path)
    args = ["--scenario", "Offline", "--mode", "accuracy", "--data", str(synthetic_coco), "--cache-dir",
            str(tmp_path / "cache"), "--output", str(tmp_path / "o"), "--user-conf", str(fast_conf), *NULL]
    assert _run(capsys, args)[0] == 0
    rc, _, err = _run(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])   # the null backend's run
    assert rc == 2 and "default/ssd-resnet34/Offline/accuracy is SIMULATED: backend null runs no model" in err
    assert not (tmp_path / "sub").exists()

    class Model(NullBackend):               # stands in for a real detector
        name, simulated = "model", False

    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: Model(config.model))
    assert _run(capsys, args)[0] == 0
    rc, out, _ = _run(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 0 and "accuracy/mlperf_log_accuracy.json: truncated from" in out
    acc = tmp_path / "sub" / "closed" / "my_org" / "results" / "default" / "ssd-resnet34" / "Offline" / "accuracy"
    assert re.search(r"\nhash=[0-9a-f]{64}\n$", (acc / "accuracy.txt").read_text())
    rc, _, err = _run(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 2 and "already exists" in err
