"""Processes preparing the same cache folder take turns (qsl/cache/lock.py), and a waiter reuses the result."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

import qsl.cache.build as prep
from qsl.cache.reader import open_cache
from qsl.cache.lock import LOCK_NAME, cache_lock
from qsl.cache.prepare import ensure_cache
from qsl.synthetic.dataset import make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SIZES = [257]


@pytest.fixture()
def data(tmp_path) -> Path:
    make_synthetic_coco(tmp_path / "coco", 3, seed=0, min_size=200, max_size=300)
    return tmp_path / "coco"


def _start(target) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def run():
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_second_preparation_waits_then_uses_the_cache_the_first_made(data, caplog):
    """flock binds open file descriptions, so a lock held here blocks a preparing thread as another process would."""
    cache_dir = data / "ssd_cache"
    cache_dir.mkdir()
    caplog.set_level(logging.INFO, logger="qsl")
    with cache_lock(cache_dir):
        assert (cache_dir / LOCK_NAME).read_text() == str(os.getpid())    # the holder says who it is
        waiter, errors = _start(lambda: ensure_cache(data, SIZES, workers=1, progress=False))
        assert _wait_for(lambda: "which is preparing the cache" in caplog.text)
        assert waiter.is_alive() and not (cache_dir / "meta.json").exists()   # it waits, writing nothing
        ann = data / "annotations" / "instances_val2017.json"
        prep.build(cache_dir, ann, data, SIZES, None, None, "torchvision", 1, False, False)   # "the other
        made = (cache_dir / "images_257_3_torchvision.npy").stat().st_ino                      # process" finishes
    waiter.join(30)
    assert not waiter.is_alive() and errors == []
    assert f"waiting for process {os.getpid()}" in caplog.text
    assert "finished by another process" in caplog.text
    assert (cache_dir / "images_257_3_torchvision.npy").stat().st_ino == made    # reused, not rebuilt
    assert open_cache(cache_dir, SIZES).num_images == 3


def test_a_waiter_rebuilds_when_the_holder_left_nothing_usable(data, caplog):
    cache_dir = data / "ssd_cache"
    cache_dir.mkdir()
    caplog.set_level(logging.INFO, logger="qsl")
    with cache_lock(cache_dir):
        waiter, errors = _start(lambda: ensure_cache(data, SIZES, workers=1, progress=False))
        assert _wait_for(lambda: "which is preparing the cache" in caplog.text)
    waiter.join(30)                                                        # the holder ended without a cache
    assert not waiter.is_alive() and errors == []
    assert "finished by another process" not in caplog.text
    assert open_cache(cache_dir, SIZES).num_images == 3


def test_a_valid_cache_is_opened_without_taking_the_lock(data):
    """Readers never lock, so a valid cache on a read-only mount still opens."""
    ensure_cache(data, SIZES, workers=1, progress=False)
    lock = data / "ssd_cache" / LOCK_NAME
    lock.unlink()
    assert ensure_cache(data, SIZES, workers=1, progress=False).num_images == 3
    assert not lock.exists()
