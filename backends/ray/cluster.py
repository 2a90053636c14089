"""Joining a Ray cluster (or starting a local one for the run), and what the workers must agree on.

Assumptions, checked against Ray 2.60.0:
- ``ray.init(address)`` raises ``RuntimeError("Version mismatch: ...")`` when the cluster runs another
  Ray or Python version than this process (Python to the patch level by default).
- ``ray.init(address="local")`` starts a new local Ray whose processes end with this process, also
  when it is killed; without an address, ``ray.init()`` would join a Ray already started on this
  machine (it records the latest one in /tmp/ray), which a run without ``--ray-address`` must not do.
- Token authentication: a local Ray turns it on and writes ``~/.ray/auth_token``; ``ray start`` uses
  it when a token exists (or ``RAY_AUTH_MODE=token``); a process joining an address given explicitly
  sends the token only with ``RAY_AUTH_MODE=token`` in its environment, and otherwise fails to
  connect after retrying for about 25 s.
- ``ray.init`` replaces the process's SIGTERM handler with one that calls ``sys.exit(15)``, and Ray's
  core then installs its failure handler for SIGTERM (it aborts the process: exit status 134):
  :func:`connect` puts the process's own handler back, so SIGTERM ends a Ray run as it ends a local one.
- Workers import only what the job's runtime environment ships (``py_modules``): ``backends`` and
  ``ground`` (:data:`WORKER_PACKAGES`); the driver's working directory reaches them only without a
  ``working_dir``, which is why :func:`code_env` gives the job an empty one.

Every problem the user can fix (no cluster at the address, differing versions) is a
:class:`RayClusterError`, an InputError: one line, exit status 2.
"""
from __future__ import annotations

import importlib
import logging
import os
import platform
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ground.errors import InputError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0   # how long the head's port may take to accept a connection
WORKER_PACKAGES = ("backends", "ground")   # all a worker imports of this project (backends/factory.py)


class RayClusterError(InputError, RuntimeError):
    """The Ray cluster cannot run the workers asked for; the message says what is missing and what to do."""


@dataclass
class Connection:
    """This process's connection to Ray; ``owned`` when it was made here, so ``close`` ends it."""

    address: str
    owned: bool

    def close(self) -> None:
        if self.owned:
            import ray
            ray.shutdown()
            self.owned = False


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise RayClusterError unless something accepts connections at ``address`` ("host:port"; "auto" passes)."""
    if address == "auto":
        return
    if "://" in address:
        raise RayClusterError(f"--ray-address {address}: give the head node's address as host:port (`ray start "
                              "--head` prints it; port 6379 by default); Ray Client (ray://) is not supported")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"--ray-address {address}: expected host:port of the cluster's head, such as "
                              "10.0.0.1:6379, or auto for the cluster this machine belongs to")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or type(e).__name__.replace("Error", " error").lower()
        raise RayClusterError(f"--ray-address {address}: no Ray cluster answers there ({why}); start one with "
                              "`ray start --head --port 6379` on the head node, or leave out --ray-address to "
                              "start a local Ray for the run") from None


def code_env(packages: Sequence[str], working_dir: str) -> dict[str, Any]:
    """A Ray runtime environment that ships the project's top-level ``packages`` to every worker process.

    Ray uploads them once per job (a local directory is accepted only in ``ray.init``'s job-level
    environment) and every node unpacks them, so nodes need no checkout of the project.
    ``working_dir`` (an empty folder; Ray uploads it at ``ray.init``, after which it may go) is the
    workers' working directory: without one Ray puts the driver's working directory on every worker's
    path, and a worker on the driver's machine could import what a remote node cannot.
    """
    dirs = [str(Path(importlib.import_module(p).__file__).parent) for p in packages]
    return {"py_modules": dirs, "working_dir": working_dir, "excludes": ["__pycache__", "*.pyc"]}


def connect(address: str | None, packages: Sequence[str] = WORKER_PACKAGES) -> Connection:
    """Join the cluster at ``address``, or start a local Ray when it is None, shipping ``packages``.

    A process already connected (an embedding program, the tests) keeps its connection and its job's
    runtime environment, which must then make ``packages`` importable on the workers (:func:`code_env`).
    """
    import ray
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        return Connection(address or "this process's Ray", owned=False)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        # "local": a new Ray even when one runs on this machine already (ray.init() would join that one).
        with tempfile.TemporaryDirectory(prefix="ray-job-") as empty:
            ray.init(address=address or "local", include_dashboard=False if address is None else None,
                     logging_level=logging.WARNING, runtime_env=code_env(packages, empty))
    except RuntimeError as e:
        if "Version mismatch" in str(e):
            detail = " ".join(str(e).split())
            raise RayClusterError(f"{where} runs other versions than this process ({detail}); install the same "
                                  "Ray and Python on every node (requirements.txt pins ray)") from None
        raise
    except ConnectionError as e:
        hint = ""
        if address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token here, with the head's token "
                    "in ~/.ray/auth_token or RAY_AUTH_TOKEN (Ray sends no token to an address given explicitly "
                    "unless told to)")
        raise RayClusterError(f"cannot join {where}: {' '.join(str(e).split())}{hint}") from None
    except ray.exceptions.AuthenticationError as e:
        raise RayClusterError(f"{where} refused this process's authentication token ({str(e).splitlines()[0]}); "
                              "copy the head's token (`ray get-auth-token` on the head) to ~/.ray/auth_token "
                              "here, or set RAY_AUTH_TOKEN") from None
    finally:
        restore_sigterm(sigterm)
    return Connection(address or "local", owned=True)


def restore_sigterm(handler: Any) -> None:
    """Put back the SIGTERM handler ``ray.init`` replaced (only the main thread sets handlers; so does Ray)."""
    import threading
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def software_versions() -> dict[str, str]:
    """The versions that must agree between the driver and every worker: Python, Ray, torch."""
    import ray
    import torch
    return {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__}


def check_versions(driver: dict[str, str], worker: dict[str, str], where: str) -> None:
    """Raise RayClusterError when ``worker`` (reported by the worker at ``where``) differs from ``driver``."""
    differ = [f"{k} {worker.get(k)} (this process: {v})" for k, v in driver.items() if worker.get(k) != v]
    if differ:
        raise RayClusterError(f"{where} runs {', '.join(differ)}; install the same versions on every node "
                              "(pip install -r requirements.txt)")
