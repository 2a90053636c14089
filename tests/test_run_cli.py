"""run.py end to end: bad input gives one clear line and status 2; accuracy runs agree with `run.py evaluate`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import run
from harness.accuracy.evaluate import decode_entries

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--backbone", "resnet18", "--image-size", "257", "257", "--num-classes", "7", "--threads", "1",
        "--random-weights"]


def _main(capsys, argv):
    rc = run.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("extra, message", [
    (["--small-mask", "1", "1", "1"], "small_mask must be 6 values of 0 or 1 (one per feature map), got [1, 1, 1] "
                                      "(given by --small-mask)"),
    (["--large-mask", "1", "1", "1", "1", "1", "2"], "large_mask must be 6 values of 0 or 1"),
    (["--image-size", "300", "0"], "--image-size must be two positive sizes"),
    (["--dboxes-steps", "8", "16"], "dboxes_steps must be 6 positive numbers"),
    (["--max-images", "0"], "--max-images must be positive"),
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--model", "/nonexistent/model300.pt"], "--model /nonexistent/model300.pt: checkpoint file not found"),
    (["--use-fp16", "--precision", "bf16"], "--use-fp16 contradicts --precision bf16"),
])
def test_bad_flags(capsys, synthetic_coco, extra, message):
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), *extra])
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_paths(capsys, tmp_path, synthetic_coco):
    rc, _, err = _main(capsys, ["--data", str(tmp_path)])
    assert rc == 2 and "annotations/instances_val2017.json not found" in err
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--user-conf", str(tmp_path / "none.conf")])
    assert rc == 2 and "none.conf does not exist" in err
    bad = tmp_path / "bad.conf"
    bad.write_text("ssd-resnet34.Offline.min_duration: 10\n")
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--user-conf", str(bad)])
    assert rc == 2 and f"cannot parse the settings file {bad}" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--output", str(blocker / "out"), *TINY])
    assert rc == 2 and "cannot write results to" in err and "--output" in err


def test_steps_that_do_not_fit(capsys, synthetic_coco, tmp_path):
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--output", str(tmp_path), "--backbone", "resnet18", "--random-weights",
                                "--image-size", "600", "600", "--dboxes-steps", "8", "16", "32", "64", "100", "300"])
    assert rc == 2 and "step" in err and "Traceback" not in err


def _log_records(run_dir: Path, n: int):
    entries = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    return decode_entries(entries, n)[0]


def test_accuracy_runs_match_direct_evaluation(capsys, synthetic_coco, tmp_path, fast_conf):
    base = ["--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "cache"), *TINY]
    rc, out, err = _main(capsys, ["evaluate", *base, "--dump-detections", str(tmp_path / "dets.json")])
    assert rc == 0, err
    direct = out.splitlines()[0]
    assert direct.startswith("mAP=")
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} == set(dets[0])
    for scenario in ("Offline", "SingleStream"):
        rc, out, err = _main(capsys, ["--scenario", scenario, "--mode", "accuracy", "--output", str(tmp_path / "o"),
                                      "--user-conf", str(fast_conf), *base])
        assert rc == 0, err
        acc_dir = tmp_path / "o" / "default" / "ssd-resnet34" / scenario / "accuracy"
        assert (acc_dir / "accuracy.txt").read_text().splitlines()[0] == direct
        assert f"{direct} (" in out and "failed samples: 0" in out
        for name in ("config.json", "user.conf", "mlperf_log_detail.txt"):
            assert (acc_dir / name).is_file()
        assert len(_log_records(acc_dir, 8)) == 8


def test_failing_sample_exits_nonzero(capsys, synthetic_coco, tmp_path, fast_conf, monkeypatch):
    from backends.null import NullBackend
    image = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())["images"][3]

    class FailOnImage3(NullBackend):  # synthetic image sizes differ, so (height, width) picks out image 3
        def predict(self, images, image_hw):
            if ((image_hw[:, 0] == image["height"]) & (image_hw[:, 1] == image["width"])).any():
                raise RuntimeError("cannot process image 3")
            return super().predict(images, image_hw)

    import harness.run.backend
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: FailOnImage3())
    rc, out, _ = _main(capsys, ["--scenario", "Offline", "--mode", "performance", "--backend", "null",
                                "--data", str(synthetic_coco),
                                "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
                                "--user-conf", str(fast_conf), "--image-size", "257", "257"])
    assert rc == 1 and "sample 3 (predict)" in out


def test_negative_server_max_wait_is_refused_before_any_folder(capsys, synthetic_coco, tmp_path):
    out = tmp_path / "o"
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--backend", "null", "--scenario", "Server",
                                "--server-max-wait-ms", "-5", "--output", str(out)])
    assert rc == 2 and "--server-max-wait-ms must be 0 or more milliseconds" in err and "Traceback" not in err
    toml = tmp_path / "w.toml"
    toml.write_text("[run]\nserver_max_wait_ms = -5\n")
    rc, _, err = _main(capsys, ["--config", str(toml), "--data", str(synthetic_coco), "--backend", "null",
                                "--scenario", "Server", "--output", str(out)])
    assert rc == 2 and f"{toml}" in err and "server_max_wait_ms must be" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_checkpoint_names_the_config_key_and_the_paths_tried(capsys, synthetic_coco, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\ncheckpoint = "model700.pt"\n')
    rc, _, err = _main(capsys, ["evaluate", "--config", str(toml), "--data", str(synthetic_coco)])
    assert rc == 2 and "--model" not in err.split(";")[0]
    assert f"{toml}: [model] checkpoint = 'model700.pt': checkpoint file not found" in err
    for tried in (Path.cwd(), tmp_path, ROOT):     # the working directory, beside the config, the project folder
        assert f"{tried / 'model700.pt'}" in err
    rc, _, err = _main(capsys, ["evaluate", "--config", str(toml), "--data", str(synthetic_coco),
                                "--model", "other.pt"])
    assert rc == 2 and "--model other.pt: checkpoint file not found" in err and str(toml) not in err


def test_help_lists_every_subcommand(capsys):
    import run
    with pytest.raises(SystemExit) as e:
        run.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(f"run.py {name} " in text for name in run.SUBCOMMANDS), text[-600:]


def test_default_user_conf_is_the_repositorys_even_where_the_working_directory_has_one(tmp_path, monkeypatch,
                                                                                      synthetic_coco):
    from harness.settings.cli import config_from_args
    from harness.settings.flags import DEFAULT_USER_CONF, benchmark_parser
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.conf").write_text("ssd-resnet34.*.performance_sample_count_override = 8\n")
    parse = lambda *extra: config_from_args(benchmark_parser().parse_args(["--data", str(synthetic_coco), *extra]))  # noqa: E731
    assert Path(parse().run.user_conf) == DEFAULT_USER_CONF
    assert parse("--user-conf", "user.conf").run.user_conf == "user.conf"       # asked for by name: this one


def test_a_folder_given_to_config_is_not_called_missing(capsys, synthetic_coco, tmp_path):
    rc, _, err = _main(capsys, ["--config", str(tmp_path), "--data", str(synthetic_coco)])
    assert rc == 2 and f"--config {tmp_path} is a folder; give a TOML file" in err and "not found" not in err


@pytest.mark.parametrize("extra, named", [
    (["--small-mask", "0", "1", "1", "1", "1", "1"], "--small-mask and --large-mask are merged"),
    (["--use-filter"], "--use-filter removes nothing"),
])
def test_single_scale_warns_about_two_scale_flags_it_cannot_honour(synthetic_coco, caplog, extra, named):
    from harness.settings.cli import config_from_args
    from harness.settings.flags import benchmark_parser
    config_from_args(benchmark_parser().parse_args(["--data", str(synthetic_coco), "--image-size", "300", "300",
                                                    *extra]))
    assert named in caplog.text and "image size 300 300 is one pass" in caplog.text
    caplog.clear()
    config_from_args(benchmark_parser().parse_args(["--data", str(synthetic_coco), "--image-size", "300", "600",
                                                    *extra]))
    assert named not in caplog.text


def test_single_scale_names_the_config_keys_it_cannot_honour(synthetic_coco, caplog, tmp_path):
    from harness.settings.cli import config_from_args
    from harness.settings.flags import benchmark_parser
    toml = tmp_path / "m.toml"
    toml.write_text("[model]\nimage_size = [300, 300]\nlarge_mask = [1, 1, 0, 0, 0, 0]\n")
    config_from_args(benchmark_parser().parse_args(["--data", str(synthetic_coco), "--config", str(toml)]))
    assert f"{toml} small_mask and large_mask are merged" in caplog.text


# --- every input is checked before anything slow: torch is not even imported for a misspelt flag ----------------

def _torch_imported(*argv: str, cwd: Path = ROOT) -> tuple[bool, str]:
    """Run run.main(argv) in a fresh interpreter: (whether torch got imported, what it printed to stderr)."""
    code = ("import sys, run\n"
            "try:\n    run.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    return lines[-1] == "True", "\n".join(lines[:-1])


@pytest.mark.parametrize("argv, said", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--help"], ""),
    (["evaluate", "--help"], ""),
    (["demo", "--help"], ""),
    (["--image-size", "300", "5000", "--data", "DATA", "--random-weights"], "5000"),
    (["--data", "DATA", "--image-size", "300", "200", "--random-weights"], "at least 257"),
])
def test_flags_are_answered_without_importing_torch(synthetic_coco, argv, said):
    argv = [str(synthetic_coco) if a == "DATA" else a for a in argv]
    imported, err = _torch_imported(*argv)
    assert not imported and said in err, err


def test_an_input_size_beyond_the_cache_limit_is_refused_with_its_memory_arithmetic(capsys, synthetic_coco):
    rc, _, err = _main(capsys, ["--data", str(synthetic_coco), "--image-size", "300", "5000", "--random-weights"])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--image-size 300 5000: 5000 is larger than 4096 pixels" in err and "75 MB" in err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a backend is built."""
    import harness.run.backend
    built = []
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: built.append(kind))
    return built


def test_user_conf_output_and_audit_config_are_checked_before_the_model_loads(capsys, synthetic_coco, tmp_path,
                                                                               monkeypatch, no_model):
    base = ["--data", str(synthetic_coco), *TINY, "--cache-dir", str(tmp_path / "c")]
    bad = tmp_path / "bad.conf"
    bad.write_text("ssd-resnet34.Offline.min_duration = -5\n")
    rc, _, err = _main(capsys, [*base, "--user-conf", str(bad), "--output", str(tmp_path / "o")])
    assert rc == 2 and "min_duration must be 0 or more" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = _main(capsys, [*base, "--output", str(blocker / "out")])
    assert rc == 2 and "cannot write results to" in err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.config").write_text("*.*.mode = 2\n")
    rc, _, err = _main(capsys, [*base, "--output", str(tmp_path / "o")])
    assert rc == 2 and "audit.config" in err
    assert no_model == []
