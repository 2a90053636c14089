"""The driver's stand-in for one remote worker: the backend interface of ``backends/base.py`` over Ray.

``stage`` (called by the pipeline's loader) sends the batch to the worker at once, so its transfer to
the node overlaps the worker's current batch; ``predict`` waits for the result, at most the call's
deadline. A batch staged for another worker, or sliced after staging (the pipeline's per-sample
retry), is sent afresh: a staged batch keeps its host tensors for that.

Faults: a worker whose actor died (its process, its node, a network partition) or that missed its
deadline raises :class:`~backends.base.WorkerLost` from ``predict``, now and on every later call; a
worker that missed its deadline is killed, so that a stuck device cannot return stale work later. An
exception raised by the backend itself (a bad sample, out of memory) is re-raised as that exception.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import ray
import torch
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from backends.base import WorkerLost

log = logging.getLogger(__name__)


def one_line(e: BaseException, limit: int = 300) -> str:
    """The gist of an exception's message: its last non-empty line (Ray's messages carry tracebacks and
    details first), up to the end of its first sentence (Ray's go on with advice), at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    gist = lines[-1].split(". ")[0] if lines else type(e).__name__
    return gist if len(gist) <= limit else gist[:limit - 3] + "..."


class ActorState:
    """One actor, shared by the proxies of its workers: once it is lost, all of them are."""

    def __init__(self, actor: Any, where: str, node_id: str) -> None:
        self.actor = actor
        self.where = where        # "worker 2 on node 10.0.0.3 (gpu-b)", for every message
        self.node_id = node_id
        self.pid: int | None = None   # its process, once started
        self.lost: str | None = None

    def lose(self, reason: str, kill: bool = False) -> None:
        if self.lost is None:
            self.lost = reason
        if kill:
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead or unreachable: nothing more to stop
                pass


class RemoteBatch(dict):
    """{S: uint8 Tensor[B, 3, S, S]} on the host; ``pending`` = (proxy, image_hw, ObjectRef) once sent."""

    pending: tuple[Any, torch.Tensor, Any] | None = None


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

    def lost_reason(self) -> str | None:
        return self.state.lost or self.lost

    def _send(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor):
        arrays = {s: t.numpy() for s, t in images.items()}
        call = self.state.actor.predict.options(concurrency_group=f"w{self.index}")
        return call.remote(self.index, arrays, image_hw.numpy())

    def stage(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
              ) -> tuple[RemoteBatch, torch.Tensor]:
        """Send the batch now; never raises (a lost worker's batch is sent by whoever predicts it)."""
        batch = RemoteBatch(images)
        if self.lost_reason() is None:
            try:
                batch.pending = (self, image_hw, self._send(images, image_hw))
            except Exception:  # noqa: BLE001 - predict sends it again and reports what is wrong
                batch.pending = None
        return batch, image_hw

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """As a local backend's ``predict``: B x fp32 Tensor[K, 6]; WorkerLost when the worker is gone."""
        if (reason := self.lost_reason()) is not None:
            raise WorkerLost(reason)
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
            if self.state.lost is None:
                log.warning("%s is lost; Ray says: %s", self.where, " ".join(str(e).split()))
            self.state.lose(f"{self.where} is lost: {one_line(e)}")
            raise WorkerLost(self.state.lost) from e
        return list(torch.from_numpy(dets.copy()).split(counts))
