"""The driver's stand-in for one remote worker: the backend interface of ``backends/base.py`` over Ray.

``stage`` (called by the pipeline's loader) sends the batch to the worker at once, so its transfer
overlaps the worker's current batch; ``predict`` waits for the result, at most the call's deadline.
A batch of :class:`~backends.ray.samples.SampleRows` sends only its rows (the worker holds the
sample set); a batch of images sends the images. A batch staged for another worker, or sliced after
staging (the pipeline's per-sample retry), is sent afresh.

Faults (Ray 2.60.0, checked in tests/cluster): actors restart (``max_restarts``) but never re-run a
call (``max_task_retries=0``), so a sample never runs twice.

- The actor's process dies: the call in flight raises ``ActorUnavailableError`` while Ray restarts
  the actor (it rebuilds its backend in its constructor). That batch raises :class:`WorkerRestarting`
  (not WorkerLost), so the pipeline gives it to another worker. The worker is re-admitted between
  batches: the pipeline's loader asks ``wait_ready`` before it takes the next one, which hands the
  actor the current sample set once it answers again; an actor not back within
  ``restart_timeout_s`` (its build included) is lost. A batch that reaches a restarting worker
  anyway (staged before the death) waits at most ``READMIT_WAIT_S`` for it, then goes elsewhere.
- The actor is dead for good (restarts used up, its node gone, it could not be rebuilt) or missed its
  deadline (it is then killed, so a stuck device cannot return stale work later): ``predict`` raises
  :class:`~backends.base.WorkerLost`, now and on every later call.
- An exception raised by the backend itself (a bad sample, out of memory) is re-raised as that exception.
"""
from __future__ import annotations

import logging
import pickle
import threading
import time
from typing import Any, Callable, Mapping

import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError, RayTaskError

from backends.base import WorkerLost

log = logging.getLogger(__name__)

POLL_S = 0.2           # how often a restarting actor is asked whether it is back
READMIT_WAIT_S = 5.0   # how long a batch given to a restarting worker waits for it before going elsewhere


def one_line(e: BaseException, limit: int = 300) -> str:
    """The gist of an exception's message: its last non-empty line (Ray's messages carry tracebacks and
    details first), up to the end of its first sentence (Ray's go on with advice), at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    gist = lines[-1].split(". ")[0] if lines else type(e).__name__
    return gist if len(gist) <= limit else gist[:limit - 3] + "..."


class WorkerRestarting(RuntimeError):
    """The worker's actor went away with the batch (its process or node) and may come back: the batch goes
    to another worker."""


class ActorState:
    """One actor, shared by the proxies of its workers: once it is lost, all of them are; while it
    restarts, all of them wait for it."""

    def __init__(self, actor: Any, where: str, restart_timeout_s: float) -> None:
        self.actor = actor
        self.where = where        # "worker 2 on node 10.0.0.3 (gpu-b)", for every message
        self.node_id: str | None = None
        self.pid: int | None = None   # its process, once started
        self.lost: str | None = None
        self.restarting: str | None = None   # why, while Ray restarts it
        self.restart_since = 0.0
        self.restart_timeout_s = restart_timeout_s
        self.restarts = 0
        # The sample set every worker must hold, (version, ObjectRef), or None: the backend's, once it is made.
        self.current_set: Callable[[], tuple[int, Any] | None] = lambda: None
        self._lock = threading.Lock()

    def lose(self, reason: str, kill: bool = False) -> None:
        if self.lost is None:
            self.lost = reason
        if kill:
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead or unreachable: nothing more to stop
                pass

    def control(self, method: str, *args: Any) -> Any:
        return getattr(self.actor, method).options(concurrency_group="control").remote(*args)

    def died(self, e: RayError) -> None:
        """A call failed because the actor's process or node went away: restarting, or lost for good."""
        if isinstance(e, ActorUnavailableError) and self.lost is None:
            with self._lock:
                if self.restarting is None:
                    self.restarting, self.restart_since = one_line(e), time.monotonic()
                    log.warning("%s went away with a batch in flight; it takes no batches until it is back (%s)",
                                self.where, self.restarting)
            return
        if self.lost is None:
            log.warning("%s is lost; Ray says: %s", self.where, " ".join(str(e).split()))
        self.lose(f"{self.where} is lost: {one_line(e)}")

    def back(self, wait_s: float) -> bool:
        """Whether the actor takes batches: a restarting one is asked, waiting at most ``wait_s``, and once
        it answers it gets the current sample set and is re-admitted. WorkerLost when it is dead for good
        or its restart took longer than ``restart_timeout_s``."""
        if self.lost is not None:
            raise WorkerLost(self.lost)
        if self.restarting is None:
            return True
        with self._lock:   # one caller re-admits it; the others find it back (or lost) afterwards
            if self.restarting is None or self.lost is not None:
                return self.lost is None
            try:
                info = ray.get(self.control("ping"), timeout=wait_s)
                current = self.current_set()
                if current is not None:
                    ray.get(self.control("load_set", *current), timeout=self.restart_timeout_s)
            except (ActorUnavailableError, GetTimeoutError) as e:
                if time.monotonic() - self.restart_since > self.restart_timeout_s:
                    self.lose(f"{self.where} did not come back within {self.restart_timeout_s:g} s of its "
                              "restart", kill=True)
                    raise WorkerLost(self.lost) from None
                if isinstance(e, ActorUnavailableError):   # answered at once: wait before asking again
                    time.sleep(min(wait_s, POLL_S))
                return False
            except RayError as e:
                self.lose(f"{self.where} is lost: {one_line(e)}")
                raise WorkerLost(self.lost) from e
            self.restarts += 1
            self.pid = info["pid"]
            self.restarting = None
        log.warning("%s is back after a restart (process %d, restart %d): it takes batches again",
                    self.where, self.pid, self.restarts)
        return True


class RemoteBatch(dict):
    """{S: Tensor} on the host (images, or SampleRows' rows); ``pending`` = (proxy, image_hw, ObjectRef) once sent."""

    pending: tuple[Any, torch.Tensor, Any] | None = None
    version: int | None = None


class WorkerProxy:
    """Worker ``index`` of one actor, as a backend: ``stage``, ``predict``, ``sizes``, ``name``, ``simulated``."""

    def __init__(self, state: ActorState, index: int, info: dict[str, Any], deadline_s: float) -> None:
        self.state = state
        self.index = index
        self.deadline_s = deadline_s
        self.name = info["name"]
        self.sizes = tuple(info["sizes"])
        self.simulated = info["simulated"]
        self.num_classes = info.get("num_classes")
        self.where = state.where if info["workers"] == 1 else f"{state.where}, its worker {index}"
        self.lost: str | None = None    # this worker alone (its backend raised WorkerLost)
        self.sent_bytes = 0             # the arguments of every batch sent, serialized
        self.sent_batches = 0

    def lost_reason(self) -> str | None:
        return self.state.lost or self.lost

    def _send(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor):
        call = self.state.actor
        version = getattr(images, "version", None)
        if version is not None:   # rows of a sample set the worker holds
            args: tuple = (self.index, version, next(iter(images.values())).numpy())
            method = call.predict_rows
        else:
            args = (self.index, {s: t.numpy() for s, t in images.items()}, image_hw.numpy())
            method = call.predict
        self.sent_bytes += len(pickle.dumps(args, protocol=5)) if version is not None else sum(
            a.nbytes for a in args[1].values()) + args[2].nbytes
        self.sent_batches += 1
        return method.options(concurrency_group=f"w{self.index}").remote(*args)

    def stage(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
              ) -> tuple[RemoteBatch, torch.Tensor]:
        """Send the batch now; never raises (a lost or restarting worker's batch is sent by whoever predicts it)."""
        batch = RemoteBatch(images)
        batch.version = getattr(images, "version", None)
        if self.lost_reason() is None and self.state.restarting is None:
            try:
                batch.pending = (self, image_hw, self._send(batch, image_hw))
            except Exception:  # noqa: BLE001 - predict sends it again and reports what is wrong
                batch.pending = None
        return batch, image_hw

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether this worker takes a batch now, waiting at most ``timeout_s`` for an actor that restarts
        (the pipeline asks between batches); WorkerLost when it never will."""
        if self.lost is not None:
            raise WorkerLost(self.lost)
        return self.state.back(timeout_s)

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """As a local backend's ``predict``: B x fp32 Tensor[K, 6]; WorkerLost when the worker is gone,
        WorkerRestarting when its actor went away with this batch, or restarts and is not back within
        ``READMIT_WAIT_S`` (the batch then goes to another worker)."""
        if not self.wait_ready(READMIT_WAIT_S):
            raise WorkerRestarting(f"{self.where} restarts ({self.state.restarting})")
        pending = getattr(images, "pending", None)
        if pending is not None and pending[0] is self and pending[1] is image_hw:
            ref = pending[2]
        else:
            ref = self._send(images, image_hw)
        try:
            dets, counts = ray.get(ref, timeout=self.deadline_s)
        except GetTimeoutError:
            reason = (f"{self.where} took more than its {self.deadline_s:g} s deadline for a batch of "
                      f"{int(image_hw.shape[0])}; it was stopped")
            self.state.lose(reason, kill=True)
            raise WorkerLost(reason) from None
        except RayTaskError as e:   # the backend raised: that exception, with the remote traceback chained
            cause = getattr(e, "cause", None)
            if isinstance(cause, WorkerLost):
                self.lost = f"{self.where}: {cause}"
                raise WorkerLost(self.lost) from e
            if isinstance(cause, Exception):
                raise cause from e
            raise RuntimeError(f"{self.where}: {one_line(e)}") from e
        except RayError as e:       # the actor, its process or its node is gone
            self.state.died(e)
            if self.state.restarting is not None and self.state.lost is None:
                raise WorkerRestarting(f"{self.where} went away with this batch; Ray restarts it if it can") from e
            raise WorkerLost(self.state.lost or f"{self.where} is lost") from e
        return list(torch.from_numpy(dets.copy()).split(counts))


def payload_bytes(proxies: list[WorkerProxy]) -> float:
    """The mean size of the arguments one batch sent from this process (its rows or its images), in bytes."""
    batches = sum(p.sent_batches for p in proxies)
    return sum(p.sent_bytes for p in proxies) / batches if batches else 0.0
