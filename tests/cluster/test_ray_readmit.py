"""The pipeline's side of re-admission, without Ray: a worker whose backend says it is not ready (a remote
worker whose process restarts) takes no batch until it is, and one that will never be ready is retired."""
from __future__ import annotations

from backends.base import WorkerLost
from backends.null import NullBackend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS


class Restarting(NullBackend):
    """Not ready for its first ``down`` questions (or never: WorkerLost at the first); counts its batches."""

    def __init__(self, down: int, never: bool = False) -> None:
        super().__init__()
        self.down, self.never, self.asked, self.batches_while_down = down, never, 0, 0

    def wait_ready(self, timeout_s: float) -> bool:
        self.asked += 1
        if self.never:
            raise WorkerLost("its actor is dead for good")
        return self.asked > self.down

    def predict(self, images, image_hw):
        self.batches_while_down += self.asked <= self.down
        return super().predict(images, image_hw)


class Two(NullBackend):
    def __init__(self, first: NullBackend) -> None:
        super().__init__()
        self.all = [first, NullBackend()]

    def workers(self):
        return self.all


def _run(tmp_path, conf, backend):
    config = load_config(None, {"run": {"scenario": "Offline", "mode": "performance", "user_conf": str(conf),
                                        "output_dir": str(tmp_path / "out"), **HINTS}})
    (run,) = run_benchmark(config, backend, Dataset(MemoryQSL(64))).runs
    return run, (run.out_dir / "harness.log").read_text()


def test_a_worker_not_ready_takes_no_batch_until_it_is(tmp_path, fast_conf):
    restarting = Restarting(down=3)
    run, log = _run(tmp_path, fast_conf, Two(restarting))
    assert run.failures == [] and restarting.asked > 3 and restarting.batches_while_down == 0
    assert restarting.calls > 0 and " lost (" not in log           # back, it computed batches again


def test_a_worker_that_will_never_be_ready_is_retired(tmp_path, fast_conf):
    run, log = _run(tmp_path, fast_conf, Two(Restarting(down=0, never=True)))
    assert run.failures == [] and "worker 0 of 2 lost (WorkerLost: its actor is dead for good); 1 left" in log
