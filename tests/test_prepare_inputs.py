"""Cache preparation refusing bad input: missing files, bad or repeated images, a bad image count."""
from __future__ import annotations

import json
import shutil

import pytest

from qsl.cache.prepare import ensure_cache, main, prepare_cache
from qsl.cache.reader import CacheError, PrepareError, open_cache
from tests.test_prepare import NUM, SIZES, _copy, _images, cache_dir, dataset  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_missing_inputs_are_named(dataset, tmp_path):
    with pytest.raises(PrepareError, match=r"annotation file .*instances_val2017.json not found"):
        prepare_cache(tmp_path, SIZES, progress=False)
    data = _copy(dataset, tmp_path)
    shutil.move(data / "val2017", data / "elsewhere")
    with pytest.raises(PrepareError, match=r"image folder .* not found; tried .*val2017"):
        prepare_cache(data, SIZES, progress=False)
    (data / "images").mkdir()
    shutil.move(data / "elsewhere", data / "images" / "val2017")
    assert prepare_cache(data, [257], workers=1, progress=False) == data / "ssd_cache"  # seed's images/ layout


@pytest.mark.parametrize("damage, reason", [
    ("missing", "file not found"),
    ("empty", r"is empty \(0 bytes\)"),
    ("corrupt", "cannot be decoded"),
])
def test_bad_image_fails_with_name_or_is_skipped(dataset, tmp_path, damage, reason):
    data = _copy(dataset, tmp_path)
    victim = _images(data)[3]
    path = data / "val2017" / victim["file_name"]
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(PrepareError, match=rf"{victim['file_name']}.*qsl_idx 3.*{reason}.*--skip-bad-images"):
        prepare_cache(data, SIZES, workers=1, progress=False)
    with pytest.raises(CacheError, match="no preprocessed cache"):
        open_cache(data / "ssd_cache", SIZES)  # a failed preparation leaves no valid-looking cache
    prepare_cache(data, SIZES, workers=2, progress=False, skip_bad=True)
    cache = open_cache(data / "ssd_cache", SIZES)
    assert cache.num_images == NUM and cache.image_ids[3] == victim["id"]  # qsl_idx 3 stays reserved
    assert [(s["qsl_idx"], s["id"]) for s in cache.skipped] == [(3, victim["id"])]
    assert cache.skipped[0]["reason"].startswith(reason.replace("\\", "")[:8])
    for s in SIZES:
        assert not cache.arrays[s][3].any() and cache.arrays[s][2].any()


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_a_file_that_is_no_image_says_so_without_internal_object_names(tmp_path, decoder):
    from qsl.cache.jpeg import BadImageError, decode_rgb
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is a text file, not a picture\n" * 4)
    with pytest.raises(BadImageError, match="cannot be decoded") as e:
        decode_rgb(path, decoder)
    assert "BytesIO" not in str(e.value) and " at 0x" not in str(e.value)


def test_an_image_listed_twice_is_refused_naming_its_id(dataset, tmp_path):
    data = _copy(dataset, tmp_path)
    ann = data / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    doc["images"].append(dict(doc["images"][1]))
    ann.write_text(json.dumps(doc))
    repeated = doc["images"][1]["id"]
    with pytest.raises(PrepareError, match=rf"lists image id {repeated} more than once \(images\[1\] and "
                                           rf"images\[{NUM}\]\)"):
        prepare_cache(data, [257], workers=1, progress=False)


@pytest.mark.parametrize("n", [0, -1])
def test_max_images_below_one_is_refused_naming_the_value(dataset, cache_dir, tmp_path, capsys, n):
    """0 would make an empty cache and -1 would drop the last image: both are mistakes, refused with the value."""
    refused = rf"max_images must be at least 1, got {n}\b"
    with pytest.raises(PrepareError, match=refused):
        prepare_cache(dataset, [257], tmp_path / "c", max_images=n, workers=1, progress=False)
    assert not (tmp_path / "c").exists()   # refused before the folder or its lock file is made
    assert main(["--data", str(dataset), "--image-size", "257", "--cache-dir", str(tmp_path / "d"),
                 "--max-images", str(n), "--quiet", "--workers", "1"]) == 2
    out = capsys.readouterr()
    assert f"max_images must be at least 1, got {n}" in out.err and "cache ready" not in out.out
    with pytest.raises(CacheError, match=refused):   # a complete cache does not serve such a request either
        ensure_cache(dataset, SIZES, cache_dir, max_images=n, workers=1, progress=False)
    with pytest.raises(CacheError, match=refused):
        ensure_cache(dataset, SIZES, tmp_path / "e", max_images=n, workers=1, progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    with pytest.raises(CacheError, match=refused):
        open_cache(cache_dir, SIZES, max_images=n)
