"""The path of an Offline sample from ``issue_queries`` to its completion only goes down: no file on it calls
back into a file that called it, and it crosses no more files than its concepts need.

A tracer records, for every call made while 64 samples go through an Offline SUT (the CPU's default
per-image guard around the null backend, the in-memory QSL), which project file it was made in and which it
runs in. The concepts: LoadGen's callbacks (base.py), the batch source (batching.py), the stage threads
(pipeline.py), a batch's load and compute (stages.py), the QSL, the per-image guard, the slicing of a batch
(backends/base.py), the backend, completion and the response record.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from backends.null import NullBackend
from harness.sut.completion import Completer
from harness.sut.offline import OfflineSUT
from harness.sut.per_image import GuardedBackend
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_units import Query, Recorder

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"harness/sut/base.py", "harness/sut/batching.py", "harness/sut/pipeline.py", "harness/sut/stages.py",
            "qsl/memory_qsl.py", "harness/sut/per_image.py", "backends/base.py", "backends/null.py",
            "harness/sut/completion.py", "harness/sut/response.py"}


PACKAGES = ("ground", "backends", "qsl", "harness")   # the product's code (not tests, not a venv inside the checkout)


def _project(path: str) -> str | None:
    rel = os.path.relpath(path, ROOT)
    return rel if rel.endswith(".py") and rel.split(os.sep)[0] in PACKAGES else None


def _trace_offline_samples(n: int = 64) -> set[tuple[str, str]]:
    """(caller file, callee file) for every call between project files while ``n`` samples are computed."""
    edges: set[tuple[str, str]] = set()
    tracing = threading.Event()

    def tracer(frame, event, arg):
        if event == "call" and tracing.is_set() and (here := _project(frame.f_code.co_filename)):
            caller = frame.f_back
            while caller is not None and _project(caller.f_code.co_filename) is None:
                caller = caller.f_back
            edges.add((_project(caller.f_code.co_filename) if caller else "", here))

    rec, qsl = Recorder(), MemoryQSL(n)
    qsl.load(range(n))
    sut = OfflineSUT(GuardedBackend(NullBackend(), per_image=True), qsl, batch_size=8,
                     completer=Completer(rec.complete, rec.response))
    threading.settrace(tracer)
    try:
        sut.start()
        sys.settrace(tracer)
        tracing.set()
        sut.issue_queries([Query(i, i) for i in range(n)])
        end = time.monotonic() + 30
        while len(rec.done) < n and time.monotonic() < end:
            time.sleep(0.01)
        tracing.clear()
    finally:
        sys.settrace(None)
        threading.settrace(None)
        sut.stop()
    assert len(rec.done) == n and all(b for _, b in rec.done)
    return {(a, b) for a, b in edges if a and a != b}


def test_an_offline_sample_goes_down_through_one_file_per_concept():
    edges = _trace_offline_samples()
    files = {f for edge in edges for f in edge}
    assert files == EXPECTED, f"crossed: {sorted(files)}"
    back = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert back == [], f"calls both ways between {back}"
