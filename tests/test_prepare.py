"""Cache preparation and opening: pixels, metadata, staleness, crash safety. Bad input: test_prepare_inputs.py."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qsl.cache.build as prep
from qsl.cache.reader import CacheError, PrepareError, open_cache
from qsl.cache.jpeg import load_resized
from qsl.cache.prepare import ensure_cache, main, prepare_cache
from qsl.synthetic.dataset import make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SIZES = (257, 320)
NUM = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, NUM, seed=0, min_size=200, max_size=360)
    return root


@pytest.fixture(scope="module")
def cache_dir(dataset) -> Path:
    return prepare_cache(dataset, SIZES, workers=1, progress=False)


def _copy(dataset: Path, tmp_path: Path) -> Path:
    shutil.copytree(dataset, tmp_path / "data", ignore=shutil.ignore_patterns("ssd_cache"))
    return tmp_path / "data"


def _images(root: Path) -> list[dict]:
    return json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"]


def test_round_trip_pixels_and_metadata(dataset, cache_dir):
    assert cache_dir == dataset / "ssd_cache"
    cache = open_cache(cache_dir, SIZES)
    images = _images(dataset)
    assert cache.num_images == NUM and cache.skipped == []
    assert cache.image_ids.tolist() == [im["id"] for im in images]
    assert cache.image_hw.tolist() == [[im["height"], im["width"]] for im in images]
    assert [m["qsl_idx"] for m in cache.meta["images"]] == list(range(NUM))
    ann = dataset / "annotations" / "instances_val2017.json"
    assert cache.meta["annotation_file"]["sha256"] == hashlib.sha256(ann.read_bytes()).hexdigest()
    for i, im in enumerate(images):
        path = dataset / "val2017" / im["file_name"]
        ref, hw = load_resized(path, SIZES, "torchvision")
        assert hw == (im["height"], im["width"])
        with Image.open(path) as pil:
            rgb = pil.convert("RGB")
            gray = pil.mode == "L"
        for s in SIZES:
            row = np.asarray(cache.arrays[s][i])
            assert row.shape == (3, s, s) and row.dtype == np.uint8
            assert np.array_equal(row, ref[s].numpy())            # exact for the same decoder
            pil_ref = np.asarray(rgb.resize((s, s), Image.BILINEAR)).transpose(2, 0, 1).astype(int)
            assert np.abs(row.astype(int) - pil_ref).max() <= 1    # documented: within 1 level of PIL
            if gray:
                assert np.array_equal(row[0], row[1]) and np.array_equal(row[1], row[2])
    assert any(Image.open(dataset / "val2017" / im["file_name"]).mode == "L" for im in images)


def test_pil_decoder_matches_pil_exactly_and_two_workers_agree(dataset, cache_dir, tmp_path):
    pil_dir = prepare_cache(dataset, [257], tmp_path / "pil", workers=1, progress=False, decoder="pil")
    two = prepare_cache(dataset, SIZES, tmp_path / "two", workers=2, progress=False)
    one = open_cache(cache_dir, SIZES)
    for s in SIZES:
        assert np.array_equal(np.asarray(open_cache(two, SIZES).arrays[s]), np.asarray(one.arrays[s]))
    arr = open_cache(pil_dir, [257]).arrays[257]
    for i, im in enumerate(_images(dataset)):
        with Image.open(dataset / "val2017" / im["file_name"]) as pil:
            ref = np.asarray(pil.convert("RGB").resize((257, 257), Image.BILINEAR)).transpose(2, 0, 1)
        assert np.array_equal(arr[i], ref)


def test_cmyk_jpeg_converted_like_pil(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "CMYK").save(tmp_path / "c.jpg")
    out, hw = load_resized(tmp_path / "c.jpg", [30], "torchvision")
    with Image.open(tmp_path / "c.jpg") as pil:
        assert pil.mode == "CMYK"
        ref = np.asarray(pil.convert("RGB").resize((30, 30), Image.BILINEAR)).transpose(2, 0, 1).astype(int)
    assert hw == (40, 50) and np.abs(out[30].numpy().astype(int) - ref).max() <= 1


def test_unwritable_and_full_output(dataset, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PrepareError, match=r"cannot write the cache to .*a_file.*--cache-dir"):
        prepare_cache(dataset, SIZES, cache_dir=blocker / "cache", progress=False)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prep.os, "posix_fallocate", full)
    with pytest.raises(PrepareError, match=r"the disk holding .*full is full: .*--cache-dir"):
        prepare_cache(dataset, SIZES, cache_dir=tmp_path / "full", progress=False)
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 5))
    with pytest.raises(PrepareError, match="not enough space"):
        prepare_cache(dataset, SIZES, cache_dir=tmp_path / "full2", progress=False)


def test_open_cache_detects_bad_caches(dataset, cache_dir, tmp_path):
    with pytest.raises(CacheError, match=r"cannot serve this run: it has no array for size 300 \(it has 257, 320\)"):
        open_cache(cache_dir, [300])
    open_cache(cache_dir, [320])  # a subset of the cached sizes is fine
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    arr = copy / f"images_320_{NUM}_torchvision.npy"
    with open(arr, "r+b") as f:
        f.truncate(arr.stat().st_size - 1)
    with pytest.raises(CacheError, match=r"images_320_6_torchvision.npy is \d+ bytes, its header implies \d+: .*truncated"):
        open_cache(copy, SIZES)
    data = _copy(dataset, tmp_path)
    ann = data / "annotations" / "instances_val2017.json"
    with pytest.raises(CacheError, match="stale"):
        doc = json.loads(ann.read_text())
        doc["images"] = doc["images"][:-1]
        ann.write_text(json.dumps(doc))
        open_cache(cache_dir, SIZES, annotation_file=ann)
    with pytest.raises(CacheError, match="no preprocessed cache"):
        open_cache(tmp_path / "nothing", SIZES)


def test_interrupt_leaves_no_valid_cache_and_rerun_resumes(dataset, tmp_path, monkeypatch):
    data = _copy(dataset, tmp_path)
    real = prep.run_tasks
    seen: list[list[int]] = []

    def interrupted(tasks, *args):
        seen.append([t[0] for t in tasks])
        gen = real(tasks, *args)
        for k, result in enumerate(gen):
            if k == 4:
                gen.close()
                raise KeyboardInterrupt
            yield result
    monkeypatch.setattr(prep, "run_tasks", interrupted)
    monkeypatch.setattr(prep, "STATE_SAVE_S", -1.0)  # save progress after every image
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(data, SIZES, workers=1, progress=False)
    with pytest.raises(CacheError, match="no preprocessed cache"):
        open_cache(data / "ssd_cache", SIZES)  # an unfinished preparation never looks like a cache
    monkeypatch.setattr(prep, "run_tasks", lambda tasks, *a: (seen.append([t[0] for t in tasks]), real(tasks, *a))[1])
    prepare_cache(data, SIZES, workers=1, progress=False)
    assert seen == [list(range(NUM)), list(range(4, NUM))]  # resumed after the 4 finished images
    resumed, reference = open_cache(data / "ssd_cache", SIZES), open_cache(dataset / "ssd_cache", SIZES)
    for s in SIZES:
        assert np.array_equal(np.asarray(resumed.arrays[s]), np.asarray(reference.arrays[s]))
    assert not list((data / "ssd_cache").glob("*.partial")) and not (data / "ssd_cache" / prep.STATE_NAME).exists()


def test_ensure_cache_reuses_or_prepares(dataset, tmp_path, caplog):
    data = _copy(dataset, tmp_path)
    first = ensure_cache(data, [257], workers=1, progress=False)
    assert not [r for r in caplog.records if r.levelname != "INFO"]   # no cache yet: not worth a warning
    stamp = (data / "ssd_cache" / "images_257_6_torchvision.npy").stat().st_mtime_ns
    caplog.clear()
    again = ensure_cache(data, [257], workers=1, progress=False)
    assert (data / "ssd_cache" / "images_257_6_torchvision.npy").stat().st_mtime_ns == stamp
    assert again.num_images == first.num_images == NUM
    small = ensure_cache(data, [257], workers=1, progress=False, max_images=2)  # served by the larger array
    assert small.num_images == 2 and small.image_ids.tolist() == first.image_ids[:2].tolist()
    assert small.arrays[257].shape == (2, 3, 257, 257) and not caplog.records
    assert (data / "ssd_cache" / "images_257_6_torchvision.npy").stat().st_mtime_ns == stamp
    with open(data / "ssd_cache" / "images_257_6_torchvision.npy", "r+b") as f:   # damage it: rebuilt, saying why
        f.truncate(1000)
    assert ensure_cache(data, [257], workers=1, progress=False).num_images == NUM
    assert "preparing size 257" in caplog.text and "images_257_6_torchvision.npy" in caplog.text
    assert "truncated or damaged" in caplog.text and "re-run" not in caplog.text   # it is rebuilding already
    assert [r.levelname for r in caplog.records if "preparing size" in r.getMessage()] == ["WARNING"]


def test_progress_is_logged_in_lines_when_stderr_is_not_a_terminal(dataset, tmp_path, capfd, caplog, monkeypatch):
    import ground.progress
    monkeypatch.setattr(ground.progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="qsl")
    prepare_cache(dataset, [257], tmp_path / "c", workers=1, progress=True)   # stderr is captured: no TTY
    assert "\r" not in capfd.readouterr().err                                   # no bar written into a log
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare 257: ")]
    assert lines[0].startswith(f"prepare 257: 1/{NUM} images (17%), ") and "left" in lines[0]
    assert lines[-1].startswith(f"prepare 257: {NUM} images in ")


def test_cli(dataset, tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main(["--data", str(dataset), "--image-size", "257", "257", "--cache-dir", str(tmp_path / "c"),
                 "--max-images", "3", "--quiet", "--workers", "1"]) == 0
    assert "3 images, sizes [257]" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "none"), "--image-size", "300", "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    assert torch.get_num_threads() == threads  # in-process decoding restores the caller's thread count


def test_workers_end_quietly_under_a_sigterm_handler_that_interrupts(dataset, tmp_path, capfd):
    """run.py turns SIGTERM into KeyboardInterrupt; the pool's workers must not inherit that."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        prepare_cache(dataset, [257], tmp_path / "c", workers=2, progress=False)
        prepare_cache(dataset, [257], tmp_path / "d", workers=1, progress=False)
        # The calling process keeps its own handlers (children spawned later inherit them).
        assert signal.getsignal(signal.SIGTERM) is interrupt and signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
