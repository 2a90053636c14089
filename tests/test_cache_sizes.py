"""The cache as a user works with it: every size kept, smaller requests served, nothing lost to a replacement.

Also: a complete cache serves a run when the image folder has moved, sizes can be
listed and pruned, a tight or full disk is reported with the figures and leaves
the cache as it was, and images that defeat the decoder or kill a worker end in
one clear line.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import qsl.cache.build as prep
import qsl.cache.decode_pool as pool
from qsl.cache.reader import CacheError, PrepareError, open_cache
from qsl.cache.prepare import check_can_prepare, ensure_cache, main, prepare_cache
from qsl.synthetic.dataset import make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

NUM = 6
ANN = Path("annotations") / "instances_val2017.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, NUM, seed=0, min_size=200, max_size=300)
    prepare_cache(root, [257, 260], root / "reference", workers=1, progress=False)
    return root


@pytest.fixture
def data(source, tmp_path) -> Path:
    shutil.copytree(source, tmp_path / "data", ignore=shutil.ignore_patterns("reference", "ssd_cache"))
    return tmp_path / "data"


def _reference(source: Path, size: int) -> np.ndarray:
    return np.asarray(open_cache(source / "reference", [size]).arrays[size])


def _decoded(monkeypatch) -> list[int]:
    """Record the qsl indices each preparation decodes."""
    seen: list[int] = []
    real = prep.run_tasks

    def recording(tasks, *args):
        seen.extend(t[0] for t in tasks)
        return real(tasks, *args)
    monkeypatch.setattr(prep, "run_tasks", recording)
    return seen


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("images_")}


def test_a_second_size_keeps_the_first_and_a_smaller_request_reuses_a_larger_array(data, source, monkeypatch):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False)
    first = cache_dir / f"images_257_{NUM}_torchvision.npy"
    inode = first.stat().st_ino
    decoded = _decoded(monkeypatch)
    ensure_cache(data, [260], workers=1, progress=False, max_images=2)        # a 2-image smoke test at 260
    both = ensure_cache(data, [257, 260], workers=1, progress=False, max_images=2)
    assert first.stat().st_ino == inode and both.num_images == 2             # 257 untouched, serves 2 of 6
    assert decoded == [0, 1]
    assert np.array_equal(both.arrays[257], _reference(source, 257)[:2])
    assert np.array_equal(both.arrays[260], _reference(source, 260)[:2])
    assert _files(cache_dir) == {first.name, "images_260_2_torchvision.npy"}


def test_extending_an_array_copies_the_rows_it_has_and_removes_the_old_file_only_after(data, source, monkeypatch):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False, max_images=2)
    decoded = _decoded(monkeypatch)
    full = ensure_cache(data, [257], workers=1, progress=False)
    assert decoded == list(range(2, NUM))                                     # rows 0 and 1 were copied
    assert np.array_equal(full.arrays[257], _reference(source, 257))
    assert _files(cache_dir) == {f"images_257_{NUM}_torchvision.npy"}


def test_an_interrupted_preparation_leaves_the_cache_that_was_there(data, monkeypatch):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False, max_images=3)
    real = prep.run_tasks

    def interrupted(tasks, *args):
        for k, result in enumerate(real(tasks, *args)):
            if k == 1:
                raise KeyboardInterrupt
            yield result
    monkeypatch.setattr(prep, "run_tasks", interrupted)
    for sizes, wanted in (([260], 3), ([257], None)):       # a new size; more images for the same size
        with pytest.raises(KeyboardInterrupt):
            ensure_cache(data, sizes, workers=1, progress=False, max_images=wanted)
        assert open_cache(cache_dir, [257], max_images=3).num_images == 3
        assert list(cache_dir.glob("*.partial"))                              # kept to resume from


def test_a_tight_disk_is_refused_before_anything_is_deleted_with_the_figures(data, monkeypatch):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    need = 3 * 260 * 260 * NUM
    with pytest.raises(PrepareError) as e:
        ensure_cache(data, [260], workers=1, progress=False)
    assert f"need {need / 1e6:.2f} MB and 1.00 KB is free" in str(e.value)      # 1,216,800 and 1,000 bytes
    assert "257 (" in str(e.value) and f"--cache-dir {cache_dir} --prune SIZE" in str(e.value)
    with pytest.raises(PrepareError):                                         # the early check says the same
        check_can_prepare(data, [260])
    assert open_cache(cache_dir, [257]).num_images == NUM and not list(cache_dir.glob("*.partial"))


def test_a_disk_that_fills_while_reserving_keeps_no_partial_arrays_and_says_what_was_needed(data, monkeypatch):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(PrepareError, match=rf"the disk holding {cache_dir} is full: the new arrays need 1.22 MB, "
                                           r"[\d.]+ (GB|MB|KB|bytes) is free now that their partial files are removed"):
        ensure_cache(data, [260], workers=1, progress=False)
    assert not list(cache_dir.glob("*.partial")) and not (cache_dir / prep.STATE_NAME).exists()
    assert open_cache(cache_dir, [257]).num_images == NUM


def test_sizes_are_listed_and_pruned(data, capsys):
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257, 260], workers=1, progress=False, max_images=4)
    assert main(["--data", str(data), "--list"]) == 0
    out = capsys.readouterr().out
    assert "  257       4       0    0.00  torchvision" in out and "  260       4" in out
    assert main(["--data", str(data), "--prune", "260"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pruned size(s) 260 from {cache_dir}: 811.33 KB freed") and "  260 " not in out
    assert _files(cache_dir) == {"images_257_4_torchvision.npy"}
    open_cache(cache_dir, [257], max_images=4)
    assert main(["--data", str(data), "--prune", "300"]) == 2
    assert "has no size 300; it has 257" in capsys.readouterr().err
    assert main(["--cache-dir", str(data / "nothing"), "--list"]) == 2
    assert "no preprocessed cache" in capsys.readouterr().err


def test_a_complete_cache_serves_a_run_after_the_image_folder_moved(data, tmp_path):
    from harness.run.dataset import open_dataset
    from harness.settings.config import DataConfig
    ensure_cache(data, [257], workers=1, progress=False)
    shutil.move(data / "val2017", tmp_path / "moved")
    assert ensure_cache(data, [257], workers=1, progress=False).num_images == NUM
    assert open_dataset(DataConfig(data_dir=str(data)), (257,), progress=False).total_count == NUM
    with pytest.raises(PrepareError, match="image folder for .* not found"):   # only a new size needs the images
        ensure_cache(data, [260], workers=1, progress=False)


def test_a_cache_of_the_previous_layout_is_used_as_it_is(data, source):
    """Version 1: one images_<S>.npy per size, all sizes for the same images."""
    cache_dir = data / "ssd_cache"
    ensure_cache(data, [257], workers=1, progress=False)
    meta = json.loads((cache_dir / "meta.json").read_text())
    entry = meta["arrays"]["257"]
    os.rename(cache_dir / entry["file"], cache_dir / "images_257.npy")
    (cache_dir / "meta.json").write_text(json.dumps({
        "version": 1, "sizes": [257], "decoder": "torchvision", "resize": entry["resize"],
        "annotation_file": meta["annotation_file"], "image_dir": meta["image_dir"], "max_images": None,
        "num_images": NUM, "array_bytes": {"257": entry["bytes"]}, "created": entry["created"],
        "images": meta["images"], "skipped": []}))
    cache = ensure_cache(data, [257], workers=1, progress=False, max_images=5)
    assert cache.num_images == 5 and np.array_equal(cache.arrays[257], _reference(source, 257)[:5])


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (enough for PIL to judge its size)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_an_image_over_pils_pixel_limit_is_a_bad_image_not_a_crash(data, capfd):
    doc = json.loads((data / ANN).read_text())
    victim = doc["images"][2]
    _png_header(data / "val2017" / victim["file_name"], 14000, 14000)
    assert main(["--data", str(data), "--image-size", "257", "--workers", "2", "--quiet"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{victim['file_name']} (qsl_idx 2" in err and "196000000 pixels are over PIL's pixel limit" in err
    cache = ensure_cache(data, [257], workers=2, progress=False, skip_bad=True)
    assert [s["qsl_idx"] for s in cache.skipped] == [2] and not cache.arrays[257][2].any()


_REAL_WORK = pool._work


def _dies_on_image_3(task):
    """A worker's task function that kills its own process at image 3 (as the OOM killer would)."""
    if task[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return _REAL_WORK(task)


def test_a_worker_that_dies_ends_the_preparation_with_the_image_it_was_on(data, monkeypatch, capfd):
    real = pool._work
    monkeypatch.setattr(pool, "_work", _dies_on_image_3)
    with pytest.raises(PrepareError, match=r"a decoding process died \(killed by signal 9; out of memory\?\) while "
                                           r"images from qsl_idx [0-3] "):
        ensure_cache(data, [257], workers=2, progress=False)
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.setattr(pool, "_work", real)
    assert ensure_cache(data, [257], workers=2, progress=False).num_images == NUM   # a re-run finishes it


def test_the_killed_workers_signal_survives_the_pool_reaping_it_at_the_same_time(data, monkeypatch):
    """The pool's own thread reaps the workers while the caller reads their exit codes. When it has reaped the
    killed one but not yet recorded its status, the caller's waitpid fails and the process reads as running:
    the message said 'signal 15' (the others, ended by the pool) for a SIGKILL. Widened here: the pool's thread
    records its reap of the killed worker 1.5 s late, the caller looks 0.2 s late."""
    import threading
    import time
    from concurrent.futures.process import _ExecutorManagerThread
    real = os.waitpid

    def waitpid(pid, options):
        pool_thread = isinstance(threading.current_thread(), _ExecutorManagerThread)
        if not pool_thread:
            time.sleep(0.2)
        got = real(pid, options)
        if pool_thread and got[0] and os.WIFSIGNALED(got[1]) and os.WTERMSIG(got[1]) == signal.SIGKILL:
            time.sleep(1.5)
        return got

    monkeypatch.setattr(pool, "_work", _dies_on_image_3)
    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(PrepareError, match=r"a decoding process died \(killed by signal 9; "):
        ensure_cache(data, [257], workers=2, progress=False)


def test_the_early_check_names_what_would_be_prepared(data):
    assert check_can_prepare(data, [257, 260], max_images=2) == [257, 260]
    ensure_cache(data, [257], workers=1, progress=False)
    assert check_can_prepare(data, [257, 260], max_images=2) == [260]
    with pytest.raises(CacheError, match="image sizes must be 1..4096"):
        check_can_prepare(data, [5000])



def test_the_early_check_takes_the_parsed_annotation_file_and_checks_it_the_same(data, monkeypatch):
    ann = data / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    monkeypatch.setattr("qsl.cache.prepare.read_image_list", None)   # the file is not read again
    assert check_can_prepare(data, [257, 260], max_images=2, annotations=doc) == [257, 260]
    with pytest.raises(PrepareError, match="max_images must be at least 1, got 0"):
        check_can_prepare(data, [257], max_images=0, annotations=doc)
    del doc["images"][1]["file_name"]
    with pytest.raises(PrepareError, match=r"an image entry lacks 'file_name' \(need images\[\]\.id, file_name"):
        check_can_prepare(data, [257], annotations=doc)
    doc["images"][1]["file_name"], doc["images"][2]["width"] = "x.jpg", "wide"
    with pytest.raises(PrepareError, match="invalid literal for int"):
        check_can_prepare(data, [257], annotations=doc)

def test_workers_of_a_preparation_killed_outright_end_quietly(data):
    """kill -9 of the preparing process: its workers end with it, without broken-pipe tracebacks."""
    import subprocess
    import sys
    import time
    slow_workers = ("import sys, time\nimport qsl.cache.decode_pool as pool\nreal = pool._work\n"
                    "def slow(task):\n    time.sleep(0.2)\n    return real(task)\npool._work = slow\n"
                    "from qsl.cache.prepare import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slow_workers, "--data", str(data), "--image-size", "257",
                             "--workers", "2", "--quiet"], cwd=Path(__file__).resolve().parent.parent,
                            stderr=subprocess.PIPE, text=True)
    partial = data / "ssd_cache" / f"images_257_{NUM}_torchvision.npy.partial"
    end = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)                   # the workers are decoding
    assert proc.poll() is None, proc.stderr.read()
    proc.kill()
    err = proc.stderr.read()          # until every writer of the pipe, the workers included, has gone
    proc.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
