"""The simulated accelerator: its derivation, its devices, its detections, and run.py on it in every scenario."""
from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
import torch

import run
from backends.model_config import ModelConfig
from backends.simulated.profiles import (
    H100_SXM_FP16_TFLOPS,
    PROFILES,
    UTILIZATION,
    DeviceTiming,
)
from backends.simulated.backend import (
    WORKERS_PER_DEVICE,
    SimSettings,
    SimulatedBackend,
    SimulatedDevice,
)
from harness.sut.response import to_record
from qsl.memory_qsl import MemoryQSL
from tests.conftest import FAST_CONF

CONFIG = "configs/simulated.toml"


@pytest.mark.parametrize("name, sizes, scale", [("h100-300-600", (300, 600), 1.0),
                                                ("h100-700-1400", (700, 1400), 2.0)])
def test_profiles_are_counted_flops_at_40_percent_of_the_h100_fp16_peak(name, sizes, scale):
    from benchmarks.flops import flops_per_sample
    flops = flops_per_sample(ModelConfig(image_size=sizes, dboxes_scale=scale))   # SSD-ResNet34, 81 classes
    profile = PROFILES[name]
    assert profile.sizes == sizes and UTILIZATION == 0.40 and H100_SXM_FP16_TFLOPS == 989.0
    assert profile.per_sample_ms == pytest.approx(flops / (0.40 * 989e12) * 1e3, rel=1e-3)


def _backend(devices: int = 1, fixed_ms: float = 0.0, per_sample_ms: float = 0.0, sizes=(32, 64)):
    timing = DeviceTiming(fixed_ms, per_sample_ms, "--sim-batch-ms")
    return SimulatedBackend(ModelConfig(image_size=sizes, num_classes=7), SimSettings(timing, devices))


def test_detections_depend_on_the_sample_only_and_fit_the_record_contract():
    backend = _backend()
    qsl = MemoryQSL(40, sizes=(32, 64), image_hw=torch.tensor([[480 + i, 640 - i] for i in range(40)]))
    qsl.load(range(40))
    batch = backend.predict(*qsl.get_batch(list(range(12))))
    reversed_batch = backend.predict(*qsl.get_batch(list(range(11, -1, -1))))
    fresh = _backend()                                  # another process's backend: no cache shared
    for i in range(12):
        alone = fresh.predict(*qsl.get_batch([i]))[0]
        assert torch.equal(batch[i], alone) and torch.equal(reversed_batch[11 - i], alone)
        assert to_record(alone, i).tobytes() == to_record(batch[i], i).tobytes()
    d = batch[0]
    assert d.dtype == torch.float32 and d.shape == (backend.detections, 6)
    assert ((d[:, :4] >= 0) & (d[:, :4] <= 1)).all() and (d[:, 2] >= d[:, 0]).all() and (d[:, 3] >= d[:, 1]).all()
    assert ((d[:, 5] >= 1) & (d[:, 5] <= 6)).all() and (d[:, 4][:-1] >= d[:, 4][1:]).all()
    assert not torch.equal(batch[0], batch[1])          # different samples, different detections


def test_a_device_runs_one_batch_at_a_time_and_each_has_two_workers():
    backend = _backend(devices=3, fixed_ms=40.0)
    workers = backend.workers()
    assert workers[0] is backend and len(workers) == 3 * WORKERS_PER_DEVICE
    assert [w.sim_device.index for w in workers] == [0, 0, 1, 1, 2, 2]
    device = workers[0].sim_device
    t0 = time.monotonic()
    both = [threading.Thread(target=device.run, args=(4,)) for _ in range(2)]   # the two workers of device 0
    for t in both:
        t.start()
    for t in both:
        t.join()
    assert time.monotonic() - t0 >= 2 * 0.040           # the second batch queued behind the first
    assert device.batches == 2 and device.samples == 8 and device.busy_s == pytest.approx(0.080)


def test_a_lost_device_raises_worker_lost():
    from backends.base import WorkerLost
    device = SimulatedDevice(2, DeviceTiming(0.0, 0.0, "--sim-batch-ms"))
    device.run(1)
    device.lose()
    with pytest.raises(WorkerLost, match="simulated device 2 was lost"):
        device.run(1)


# -- run.py ----------------------------------------------------------------------------------------------------

def _run(capsys, argv):
    rc = run.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("extra, message", [
    (["--sim-devices", "2"], "--sim-devices needs --backend simulated"),
    (["--backend", "simulated", "--sim-devices", "0"], "--sim-devices must be 1 to 64, got 0"),
    (["--backend", "simulated", "--sim-batch-ms", "1", "-2"], "--sim-batch-ms A B: milliseconds"),
    (["--backend", "simulated", "--sim-batch-ms", "1", "2", "--sim-profile", "h100-300-600"],
     "give --sim-profile or --sim-batch-ms A B, not both"),
])
def test_bad_simulation_flags_are_one_line_and_status_2(capsys, synthetic_coco, extra, message):
    rc, _, err = _run(capsys, ["--data", str(synthetic_coco), *extra])
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_help_says_it_is_a_measuring_instrument_not_a_model(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "A measuring instrument for the harness, not a model" in out and "h100-300-600" in out


# The tests' half-second runs, with the query counts LoadGen's early stopping needs to call the p99
# scenarios VALID (MultiStream: 662 queries, about 3 s at 4-5 ms per query; Server: about 460).
SIM_FAST_CONF = FAST_CONF + "ssd-resnet34.MultiStream.min_query_count = 662\n" \
                            "ssd-resnet34.Server.min_query_count = 500\n"
# Hints for 4 simulated H100s on this host (LoadGen makes its queries from them, so they must overstate the
# speed); the images are at 300 only, to keep the host's gather small.
SCENARIO_FLAGS = {"Offline": ["--offline-expected-qps", "20000"], "Server": ["--server-target-qps", "500"],
                  "SingleStream": [], "MultiStream": []}


@pytest.mark.parametrize("scenario", ["Offline", "Server", "SingleStream", "MultiStream"])
def test_every_scenario_is_valid_on_four_simulated_devices(capsys, caplog, synthetic_coco, tmp_path, scenario):
    conf = tmp_path / "sim_fast.conf"
    conf.write_text(SIM_FAST_CONF)
    caplog.set_level(logging.INFO, logger="harness")
    rc, text, err = _run(capsys, ["--config", CONFIG, "--backend", "simulated", "--sim-devices", "4",
                                  "--scenario", scenario, "--data", str(synthetic_coco), "--image-size", "300", "300",
                                  "--cache-dir", str(tmp_path / "cache"), "--user-conf", str(conf),
                                  "--output", str(tmp_path / "out"), *SCENARIO_FLAGS[scenario]])
    assert rc == 0 and "result: SIMULATED (LoadGen: VALID)" in text and "failed samples: 0" in text, text + err[-2000:]
    assert "backend simulated" in text
    assert "simulated accelerator, not a model: 4 device(s) x 2 workers" in caplog.text


def test_an_accuracy_run_logs_every_sample_with_its_own_detections(capsys, synthetic_coco, tmp_path, fast_conf):
    out = tmp_path / "out"
    rc, text, _ = _run(capsys, ["--config", CONFIG, "--backend", "simulated", "--sim-devices", "2",
                                "--mode", "accuracy", "--data", str(synthetic_coco), "--image-size", "300", "300",
                                "--cache-dir", str(tmp_path / "cache"), "--user-conf", str(fast_conf),
                                "--output", str(out)])
    folder = out / "default/ssd-resnet34/Offline/accuracy"
    entries = json.loads((folder / "mlperf_log_accuracy.json").read_text())
    assert rc == 0 and "mAP=" in text and (folder / "accuracy.txt").is_file()
    assert sorted(e["qsl_idx"] for e in entries) == list(range(8))
    rows = [np.frombuffer(bytes.fromhex(e["data"]), np.float32).reshape(-1, 7) for e in entries]
    assert all(len(r) == 100 and (r[:, 0] == e["qsl_idx"]).all() for r, e in zip(rows, entries))


def _lose_device_after(device, batches: int) -> threading.Thread:
    """A started thread that makes ``device`` lost once it has computed ``batches`` batches."""
    def lose():
        while device.batches < batches:
            time.sleep(0.001)
        device.lose()

    thread = threading.Thread(target=lose, daemon=True)
    thread.start()
    return thread


def test_an_offline_run_loses_a_device_midway_and_stays_valid_with_no_failure(tmp_path, fast_conf):
    from harness.run.benchmark import run_benchmark
    from harness.run.dataset import Dataset
    from tests.test_harness_scenarios import _config

    backend = _backend(devices=2, fixed_ms=1.0, per_sample_ms=0.1, sizes=(32, 32))   # 1.8 ms per batch of 8
    lose = _lose_device_after(backend.devices[1], 20)
    result = run_benchmark(_config(tmp_path, fast_conf, "Offline"), backend, Dataset(MemoryQSL(100)))
    lose.join(5)
    (run_,) = result.runs
    assert run_.loadgen.validity == "VALID" and run_.failures == [] and result.exit_code == 0
    lost, kept = backend.devices[1], backend.devices[0]
    assert lost.lost and kept.samples > lost.samples > 0 and kept.samples + lost.samples == run_.issued


def test_a_worker_lost_mid_run_is_recorded_and_shown_not_only_logged(tmp_path, fast_conf):
    """A VALID run that lost a device says so where people and programs read it: the summary, report.md
    and run_record.json, naming the worker and why."""
    from harness.report.summary import format_summary
    from harness.results.run_record import read_run_record
    from harness.run.benchmark import run_benchmark
    from harness.run.dataset import Dataset
    from tests.test_harness_scenarios import _config

    backend = _backend(devices=2, fixed_ms=1.0, per_sample_ms=0.1, sizes=(32, 32))
    lose = _lose_device_after(backend.devices[1], 5)
    result = run_benchmark(_config(tmp_path, fast_conf, "Offline"), backend, Dataset(MemoryQSL(100)))
    lose.join(5)
    (run_,) = result.runs
    assert run_.loadgen.validity == "VALID" and run_.failures == []
    # two workers per simulated device: the lost device takes both of its workers with it
    assert len(run_.lost_workers) == 2 and all("of 4" in w and "lost" in w for w in run_.lost_workers)
    assert read_run_record(run_.out_dir)["lost_workers"] == run_.lost_workers
    assert "workers lost during the run: 2 of 4" in format_summary(result)
    assert "workers lost during the run: 2 of 4" in (run_.out_dir.parent.parent / "report.md").read_text()
