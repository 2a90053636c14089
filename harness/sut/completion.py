"""Completing LoadGen samples exactly once, also when something fails.

Every sample LoadGen issues is registered here by its response id. It leaves
the register exactly once: completed with its record, or completed with an
empty response after a failure (logged with its sample index and counted).
Completion is idempotent per id, so a worker's normal completion racing a
failure drain can never complete a sample twice, and a drain after a worker
thread dies or after Ctrl-C can never miss one: LoadGen never waits forever.

The worker side hands over detections (``complete_detections``): their
records are built and completed here, one LoadGen call per batch.

``complete_fn`` defaults to ``mlperf_loadgen.QuerySamplesComplete``; tests
pass a recorder. It must copy the response bytes during the call (LoadGen
does), because the buffers are freed right after it returns.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from harness.sut.response import RECORD_FLOATS, pack_records, to_record

log = logging.getLogger("harness")

MAX_LOGGED_FAILURES = 20  # individual failure lines logged; the rest are only counted


@dataclass(frozen=True)
class Sample:
    """One issued sample: LoadGen's response id and the QSL index it names."""

    id: int
    index: int


@dataclass(frozen=True)
class SampleFailure:
    index: int      # QSL sample index
    stage: str      # "load", "predict", "record", "complete", "worker", "interrupted"
    error: str      # exception type and message


def _loadgen_complete(responses: list) -> None:
    import mlperf_loadgen as lg
    lg.QuerySamplesComplete(responses)


def _loadgen_response(sample_id: int, ptr: int, nbytes: int):
    import mlperf_loadgen as lg
    return lg.QuerySampleResponse(sample_id, ptr, nbytes)


class Completer:
    """Registry of outstanding samples; the only place that completes them."""

    def __init__(self, complete_fn: Callable[[list], None] = _loadgen_complete,
                 response_fn: Callable[[int, int, int], object] = _loadgen_response) -> None:
        self._complete_fn = complete_fn
        self._response_fn = response_fn
        self._lock = threading.Lock()
        self._outstanding: dict[int, tuple[int, float]] = {}  # response id -> (sample index, issue time)
        self._closed_reason: tuple[str, str] | None = None  # (stage, message) once closed
        self.failures: list[SampleFailure] = []
        self.completed = 0
        self.latencies_s: list[float] = []  # issue-to-completion time of each sample completed with a result

    # -- issue side --------------------------------------------------------------
    def register(self, samples: Sequence[Sample]) -> bool:
        """Record issued samples. If the system already stopped, fail them at once and return False."""
        now = time.perf_counter()
        with self._lock:
            closed = self._closed_reason
            if closed is None:
                for s in samples:
                    self._outstanding[s.id] = (s.index, now)
                return True
        self._fail_now(samples, closed[0], closed[1], quiet=True)  # close() already said why, once
        return False

    # -- worker side -------------------------------------------------------------
    def complete(self, samples: Sequence[Sample], records: Sequence[np.ndarray]) -> None:
        """Complete ``samples`` with their float32 records ([K, 7] each), in one LoadGen call.

        A sample leaves the register before its response is built, so that a concurrent failure drain
        cannot complete it too; from then on whatever goes wrong (a malformed record, a response that
        cannot be built, the completion call itself) completes it empty as failed in stage "complete",
        never loses it.
        """
        with self._lock:
            claimed = [(s, r, self._outstanding.pop(s.id, None)) for s, r in zip(samples, records)]
        good: list[tuple[Sample, np.ndarray, float]] = []
        for s, r, entry in claimed:
            if entry is None:
                continue
            if r.ndim == 2 and r.shape[1] == RECORD_FLOATS:
                good.append((s, r, entry[1]))
            else:
                self._fail_now([s], "complete", f"malformed record: shape {list(r.shape)}, not [K, {RECORD_FLOATS}]")
        if not good:
            return
        sent: list[tuple[Sample, float]] = []
        packed = False
        try:
            buf, spans = pack_records([r for _, r, _ in good])
            packed = True
            base = buf.ctypes.data
            responses = []
            for (s, _, issued), (off, n) in zip(good, spans):
                try:
                    responses.append(self._response_fn(s.id, base + off if n else 0, n))
                    sent.append((s, issued))
                except Exception as e:  # noqa: BLE001 - this sample fails, the others go on
                    self._fail_now([s], "complete", e)
            self._complete_fn(responses)  # LoadGen copies the bytes here; buf stays alive until it returns
        except Exception as e:  # noqa: BLE001 - packing or the completion call: none of them was completed
            self._fail_now([s for s, _ in sent] if packed else [s for s, _, _ in good], "complete", e)
            return
        now = time.perf_counter()
        with self._lock:
            self.completed += len(sent)
            self.latencies_s.extend(now - issued for _, issued in sent)

    def complete_detections(self, samples: Sequence[Sample], detections: Sequence[torch.Tensor]) -> None:
        """Complete ``samples`` with their detections (Tensor[K, 6] each, ``backends/base.py``), in one LoadGen
        call: each sample's 7-float record (harness/sut/response.py); a record that cannot be built fails its
        sample alone, in stage "record"."""
        good, records = [], []
        for s, d in zip(samples, detections):
            try:
                records.append(to_record(d, s.index))
                good.append(s)
            except Exception as e:  # noqa: BLE001
                self.fail([s], "record", e)
        self.complete(good, records)

    def fail(self, samples: Sequence[Sample], stage: str, error: BaseException | str) -> None:
        """Complete ``samples`` with empty responses and record why."""
        with self._lock:
            mine = [s for s in samples if self._outstanding.pop(s.id, None) is not None]
        self._fail_now(mine, stage, error)

    def close(self, stage: str, message: str) -> int:
        """Stop accepting work: fail everything outstanding and everything issued later.

        Used when a worker thread dies and on Ctrl-C. Returns how many samples it failed.
        """
        with self._lock:
            if self._closed_reason is None:
                self._closed_reason = (stage, message)
            pending = [Sample(i, idx) for i, (idx, _) in self._outstanding.items()]
            self._outstanding.clear()
        if pending:   # one line for all of them, not one per sample
            log.error("%s: %d outstanding sample(s) completed with empty responses; so is every sample "
                      "issued from now on", message, len(pending))
        self._fail_now(pending, stage, message, quiet=True)
        return len(pending)

    # -- state -------------------------------------------------------------------
    def pending(self, samples: Sequence[Sample]) -> list[Sample]:
        """Those of ``samples`` not completed yet (to hand to another worker without computing any twice)."""
        with self._lock:
            return [s for s in samples if s.id in self._outstanding]

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._outstanding)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> tuple[str, str] | None:
        """(stage, message) of the first close, e.g. ("worker", "compute thread died: ..."); None while open."""
        return self._closed_reason

    def _fail_now(self, samples: Sequence[Sample], stage: str, error: BaseException | str,
                  quiet: bool = False) -> None:
        """Record and complete ``samples`` empty; log each (up to a cap) unless ``quiet`` (the caller logged).

        ``error`` is recorded as text ("RuntimeError: boom" for an exception), whoever fails the samples:
        the failures go into run_record.json as they are.
        """
        if not samples:
            return
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            first = len(self.failures)
            self.failures.extend(SampleFailure(s.index, stage, message) for s in samples)
        for k, s in enumerate(() if quiet else samples):
            if first + k < MAX_LOGGED_FAILURES:
                log.error("sample index %d failed in %s: %s", s.index, stage, message)
            elif first + k == MAX_LOGGED_FAILURES:
                log.error("more samples failed; further failures are only counted")
        try:
            self._complete_fn([self._response_fn(s.id, 0, 0) for s in samples])
        except Exception as e:  # noqa: BLE001 - LoadGen cannot take even an empty response: end the run
            log.error("could not complete %d sample(s) with LoadGen (%s: %s)", len(samples), type(e).__name__, e)
            self.close("worker", f"LoadGen refused to complete samples: {type(e).__name__}: {e}")
