"""The Ray actor's own work, called in this process: gathering rows of a sample set into its staging
buffers (pinned only where CUDA is available), then the backend's ``stage`` and ``predict``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.null import NullBackend
from backends.ray.cluster import software_versions
from backends.ray.worker import WorkerActor


class Recording(NullBackend):
    """Records what ``stage`` got and checks ``predict`` gets what ``stage`` returned."""

    def __init__(self):
        super().__init__()
        self.staged = []

    def workers(self):
        return [self, Recording()]

    def stage(self, images, image_hw):
        self.staged.append(({s: t for s, t in images.items()}, image_hw))
        return ("staged", images), image_hw

    def predict(self, images, image_hw):
        assert images[0] == "staged"
        return super().predict(images[1], image_hw)


def test_rows_are_gathered_into_each_workers_own_buffers_and_staged():
    actor = WorkerActor(lambda device, threads, weights: Recording(), "cuda", 0, None, software_versions())
    assert actor.info["workers"] == 2 and actor.info["pinned"] == torch.cuda.is_available()
    images = {300: np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(3, 1).repeat(300, 2).repeat(300, 3)}
    hw = np.array([[480, 640 + i] for i in range(5)], dtype=np.int64)
    actor.load_set(1, (images, hw))
    for worker in (0, 1):
        dets, counts = actor.predict_rows(worker, 1, np.array([4, 1]))
        assert counts == [2, 2] and dets.shape == (4, 6)
    first, second = actor.workers
    (staged, staged_hw), = first.staged
    assert staged[300][:, 0, 0, 0].tolist() == [4, 1] and staged_hw.tolist() == [[480, 644], [480, 641]]
    assert staged[300].is_pinned() == torch.cuda.is_available()
    actor.predict_rows(0, 1, np.array([2]))                  # the same worker's buffers again, the other's apart
    assert first.staged[1][0][300].data_ptr() == staged[300].data_ptr()
    assert second.staged[0][0][300].data_ptr() != staged[300].data_ptr()
    with pytest.raises(KeyError, match=r"sample set 2 is not loaded on this worker \(it holds \[1\]\)"):
        actor.predict_rows(0, 2, np.array([0]))
