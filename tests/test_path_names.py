"""Names that become folder names under --output are one safe path component, refused (exit 2) otherwise."""
from __future__ import annotations

import pytest

import run
from ground.errors import ConfigError, OutputError
from harness.results.layout import scenario_dir
from harness.settings.config import RunConfig

BAD = ["../../x", "/tmp/abs", "a/b", "..", ".", ".hidden", "", "a b", "x\\y", "x" * 101]


@pytest.mark.parametrize("name", BAD)
def test_a_system_name_that_is_no_folder_name_is_refused(name):
    with pytest.raises(ConfigError, match=r"run.system_name .* (would leave its folder|is not a safe folder name)"):
        RunConfig(system_name=name)
    with pytest.raises(OutputError, match="the system name"):     # the layout refuses it too
        scenario_dir("out", name, "Offline")


@pytest.mark.parametrize("name", ["default", "demo", "DGX-A100_A100-SXM4-80GBx1_TRT", "h100+ray.v2"])
def test_usual_system_names_pass(name):
    assert scenario_dir("out", RunConfig(system_name=name).system_name, "Offline").parts == \
        ("out", name, "ssd-resnet34", "Offline")


def test_run_with_a_path_as_system_name_writes_nothing(capsys, tmp_path, synthetic_coco, fast_conf):
    out = tmp_path / "a" / "b" / "out"
    rc = run.main(["--backend", "null", "--mode", "accuracy", "--data", str(synthetic_coco), "--output", str(out),
                   "--cache-dir", str(tmp_path / "cache"), "--user-conf", str(fast_conf), "--system-name", "../../x",
                   "--backbone", "resnet18", "--image-size", "64", "64", "--num-classes", "7", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "run.system_name '../../x' would leave its " \
        "folder" in err and "--system-name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.conf"]   # no output, no cache, nothing beside
