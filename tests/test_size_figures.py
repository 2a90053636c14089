"""Sizes in messages: a need just above the free space never reads equal to it."""
from __future__ import annotations

import re
import shutil

from qsl.cache.store import array_bytes, room_problem


def test_a_need_just_above_the_free_space_reads_above_it(tmp_path, monkeypatch):
    need = array_bytes(300, 60)                          # 3 x 300 x 300 x 60 = 16,200,000 bytes
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, need - 1000))
    need_text, free_text = re.search(r"need (.+) and (.+) is free", room_problem(tmp_path, None, [300], 60)).groups()
    assert (need_text, free_text) == ("16.200 MB", "16.199 MB")


def test_sizes_take_their_own_unit_and_the_decimals_it_takes():
    from ground.files import format_size, format_sizes
    assert [format_size(n) for n in (2_500_000_000, 16_200_000, 1_000, 512)] == \
        ["2.50 GB", "16.20 MB", "1.00 KB", "512 bytes"]
    assert format_sizes(20_000_100, 19_999_000) == ["20.000 MB", "19.999 MB"]
    assert format_sizes(1_000_000_001, 1_000_000_000) == ["1.000000001 GB", "1.000000000 GB"]
    assert format_sizes(5, 5) == ["5 bytes", "5 bytes"]          # equal counts may read alike
