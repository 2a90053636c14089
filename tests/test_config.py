"""Run configuration: file then overrides, and clear errors for every bad value."""
import json
import os
import re

import pytest

from backends.model_config import ModelConfig
from harness.settings.config import Config, load_config
from ground.errors import ConfigError


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_the_seed_defaults():
    cfg = load_config()
    assert cfg.model.image_size == (300, 300)
    assert cfg.model.small_mask == (1, 1, 1, 1, 1, 1) and cfg.model.large_mask == (1, 1, 1, 1, 1, 1)
    assert (cfg.model.score_threshold, cfg.model.nms_iou, cfg.model.max_per_class, cfg.model.max_detections) \
        == (0.05, 0.5, 200, 200)
    assert cfg.model.sizes == (300,)  # equal sizes run one pass


def test_file_then_overrides(tmp_path):
    p = write(tmp_path, '[model]\nimage_size = [700, 1400]\ndboxes_scale = 2\nuse_filter = true\n'
                        '[run]\nscenario = "Server"\n')
    cfg = load_config(p, {"model": {"use_filter": None, "precision": "bf16"}, "run": {"batch_size": 4}})
    assert cfg.model.image_size == (700, 1400) and cfg.model.sizes == (700, 1400)
    assert cfg.model.use_filter is True  # None overrides leave the file's value
    assert cfg.model.precision == "bf16"
    assert cfg.run.scenario == "Server" and cfg.run.batch_size == 4


def test_resolved_config_round_trips_as_json(tmp_path):
    cfg = load_config(None, {"model": {"dboxes_steps": [8, 16, 32, 64, 100, 300]}})
    cfg.save(tmp_path / "resolved.json")
    saved = json.loads((tmp_path / "resolved.json").read_text())
    assert saved["model"]["dboxes_steps"] == [8, 16, 32, 64, 100, 300] and saved["cwd"] == os.getcwd()
    assert load_config(None, saved) == cfg


def test_checkpoint_relative_to_config_file(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    p = write(tmp_path, '[model]\ncheckpoint = "m.pt"\n')
    assert load_config(p).model.checkpoint == str(tmp_path / "m.pt")


@pytest.mark.parametrize("text, words", [
    ('[model]\nsmall_mask = [1, 1, 1]\n', ["small_mask", "6 values", "[1, 1, 1]"]),
    ('[model]\nlarge_mask = [0, 0, 0, 0, 0, 0]\n', ["large_mask", "at least one"]),
    ('[model]\nsmall_mask = [1, 2, 1, 1, 1, 1]\n', ["small_mask", "0 or 1"]),
    ('[model]\nimage_size = [300, -600]\n', ["image_size", "positive integers"]),
    ('[model]\nimage_size = [300]\n', ["image_size", "two"]),
    ('[model]\nprecision = "int8"\n', ["precision", "fp32, bf16, fp16", "int8"]),
    ('[model]\nimage_sizes = [300, 300]\n', ["unknown key", "image_sizes"]),
    ('[modle]\n', ["unknown table", "modle"]),
    ('[run]\nscenario = "offline"\n', ["run.scenario", "Offline"]),
    ('[model]\ndboxes_steps = [8, 16]\n', ["dboxes_steps", "6 positive"]),
    ('[model\n', ["not valid TOML"]),
    ('[model]\nimage_size = "300"\n', ["image_size must be a list of two integers such as [300, 600]",
                                       "got the string '300'"]),
    ('[model]\nimage_size = 300\n', ["image_size must be a list of two integers", "got 300"]),
    ('[model]\nsmall_mask = "111111"\n', ["small_mask must be a list of 6 values of 0 or 1", "the string '111111'"]),
    ('[model]\ncheckpoint = 5\n', ["checkpoint must be a path in quotes, got 5"]),
    ('[run]\nserver_max_wait_ms = -5\n', ["run.server_max_wait_ms must be a number of milliseconds, 0 or more",
                                          "got -5"]),
    ('[run]\nserver_max_wait_ms = "5"\n', ["server_max_wait_ms must be a number", "got the string '5'"]),
    ('[run]\nserver_target_qps = -1\n', ["run.server_target_qps must be a positive number", "got -1"]),
    ('[run]\nmultistream_expected_latency_ms = 0\n', ["run.multistream_expected_latency_ms must be a positive"]),
])
def test_bad_values_name_the_file_and_key(tmp_path, text, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg or "not valid TOML" in msg
    for w in words:
        assert w in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_override_error_says_command_line():
    with pytest.raises(ConfigError, match=r"command line \[model\].*small_mask"):
        load_config(None, {"model": {"small_mask": [1, 1]}, "run": {"batch_size": 2}})
    with pytest.raises(ConfigError) as e:
        load_config(None, {"model": {"small_mask": [1, 1]}, "run": {"batch_size": 2}})
    assert str(e.value).count("command line") == 1


def test_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.model.image_size = (1, 1)  # type: ignore[misc]
    assert ModelConfig(image_size=(700, 1400)).sizes == (700, 1400)


def test_batch_invariant_and_trust_pickle(tmp_path):
    cfg = load_config()
    assert cfg.run.batch_invariant == "auto" and cfg.model.trust_pickle is False
    p = write(tmp_path, '[model]\ntrust_pickle = false\n[run]\nbatch_invariant = "off"\n')
    cfg = load_config(p)
    assert cfg.model.trust_pickle is False and cfg.run.batch_invariant == "off"
    assert load_config(p, {"model": {"trust_pickle": True}}).model.trust_pickle is True   # the flag's way in
    with pytest.raises(ConfigError, match=r"run.batch_invariant must be one of auto, on, off; got 'yes'"):
        load_config(None, {"run": {"batch_invariant": "yes"}})


@pytest.mark.parametrize("value", ["true", '"yes"'])
def test_a_config_file_cannot_trust_pickled_code(tmp_path, value):
    p = write(tmp_path, f"[model]\ntrust_pickle = {value}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))} \[model\]: trust_pickle = .* is refused in a "
                                          r"config file: .* pass --trust-pickle"):
        load_config(p)
    with pytest.raises(ConfigError, match="is refused in a config file"):   # also when the flag is given
        load_config(p, {"model": {"trust_pickle": True}})


def test_hints_default_to_none_and_zero_wait_is_allowed(tmp_path):
    run = load_config().run
    assert (run.offline_expected_qps, run.server_target_qps, run.singlestream_expected_latency_ms,
            run.multistream_expected_latency_ms) == (None, None, None, None)
    run = load_config(write(tmp_path, '[run]\nserver_max_wait_ms = 0\nserver_target_qps = 20\n')).run
    assert run.server_max_wait_ms == 0 and run.server_target_qps == 20


@pytest.mark.parametrize("text, message", [
    ('[model]\nnum_classes = "7"\n', "[model]: num_classes must be a whole number, got the string '7'"),
    ('[model]\nnum_classes = 7.5\n', "[model]: num_classes must be a whole number, got 7.5"),
    ('[model]\ndboxes_scale = "2"\n', "[model]: dboxes_scale must be a number, got the string '2'"),
    ('[model]\nuse_filter = 1\n', "[model]: use_filter must be true or false, got 1"),
    ('[model]\nprecision = 16\n', "[model]: precision must be a string in quotes, got 16"),
    ('[run]\nbatch_size = "8"\n', "[run]: batch_size must be a whole number, got the string '8'"),
    ('[data]\nmax_images = true\n', "[data]: max_images must be a whole number, got true"),
])
def test_a_value_of_the_wrong_type_names_its_key(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p} {message}"


def test_an_unknown_key_gets_a_suggestion(tmp_path):
    p = write(tmp_path, '[model]\nimage_sizes = [300, 300]\nnum_class = 7\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) image_sizes \(did you mean image_size\?\), num_class "
                                          r"\(did you mean num_classes\?\)"):
        load_config(p)


def test_a_folder_given_as_config_says_so(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder; give a TOML file"):
        load_config(tmp_path)
