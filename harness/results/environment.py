"""What a run ran on, as recorded in its ``run_status.json``: provenance a reader can check.

The values are the ones in force, read from the loaded backend, never the
requested ones: a run asked for ``device = "auto"`` records ``cpu`` or
``cuda:0``; ``cuda_graphs`` is on only where the network really replays CUDA
graphs (a CUDA device with the option on). The backend is read by duck typing
(``name``, ``simulated``, ``device``, ``cfg``, ``workers()``, the guard's
``per_image``), so any backend of backends/base.py can be described; a
backend that does not say whether it is ``simulated`` is recorded as
simulated, since nothing shows that it ran a model.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.sut.per_image import GuardedBackend

PACKAGES = ("torch", "torchvision", "mlcommons-loadgen", "numpy")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the machine type.

    Never ``platform.processor()`` or ``platform.platform()``: on Linux they run ``uname -p`` in a
    child process, and forking a process whose torch threads are running is best avoided.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return os.uname().machine


def memory_bytes() -> int | None:
    """The machine's memory (Linux ``/proc/meminfo`` MemTotal), else None."""
    try:
        for line in Path("/proc/meminfo").read_text(errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _devices(backend: Any) -> list[str]:
    workers = getattr(backend, "workers", None)
    found = [str(getattr(w, "device", "")) for w in (workers() if callable(workers) else [backend])]
    return sorted({d for d in found if d})


def _accelerators(devices: list[str]) -> list[str]:
    """The model name of every CUDA device in ``devices``."""
    cuda = [d for d in devices if d.startswith("cuda")]
    if not cuda:
        return []
    import torch
    return [f"{d}: {torch.cuda.get_device_name(torch.device(d))}" for d in cuda]


def describe_environment(backend: Any, use_pycocotools: bool = False) -> dict[str, Any]:
    """Date, versions, host, CPU, devices and the backend's effective settings, as a JSON-ready dict."""
    import torch
    core = backend
    while isinstance(core, GuardedBackend):
        core = core.inner
    devices = _devices(core)
    cfg = getattr(core, "cfg", None)
    on_cuda = any(d.startswith("cuda") for d in devices)
    evaluator = "pycocotools" if use_pycocotools else "faster-coco-eval"
    return {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "platform": " ".join((os.uname().sysname, os.uname().release, os.uname().machine)),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "threads": torch.get_num_threads(),
        "backend": getattr(core, "name", type(core).__name__),
        "simulated": bool(getattr(core, "simulated", True)),
        "device": devices[0] if len(devices) == 1 else devices,
        "accelerators": _accelerators(devices),
        "precision": getattr(cfg, "precision", None),
        "precision_reason": getattr(core, "precision_reason", None),
        "cuda_graphs": bool(getattr(cfg, "cuda_graphs", False)) and on_cuda,
        "compile": bool(getattr(cfg, "compile", False)),
        "channels_last": getattr(cfg, "channels_last", None),
        "per_image": bool(getattr(backend, "per_image", False)) if isinstance(backend, GuardedBackend) else False,
        "checkpoint": getattr(cfg, "checkpoint", None),
        "evaluator": f"{evaluator} {package_version(evaluator) or '?'}",
    }


def environment_line(env: dict[str, Any]) -> str:
    """One line for people: where and with what the run ran."""
    device = env.get("device")
    device = ", ".join(device) if isinstance(device, list) else device
    on = "; ".join(env.get("accelerators") or []) or env.get("cpu", "?")
    pk = env.get("packages") or {}
    backend = env.get("backend", "?") + (" (SIMULATED: no model)" if env.get("simulated", True) else "")
    parts = [f"{env.get('date', '?')}", f"device {device} ({on})", f"{env.get('threads')} threads",
             f"backend {backend}"]
    if env.get("precision"):
        why = f" ({env['precision_reason']})" if env.get("precision_reason") else ""
        parts.append(f"precision {env['precision']}{why}, cuda_graphs {'on' if env.get('cuda_graphs') else 'off'}, "
                     f"compile {'on' if env.get('compile') else 'off'}")
    parts += [f"python {env.get('python')}, torch {pk.get('torch')}, torchvision {pk.get('torchvision')}, "
              f"LoadGen {pk.get('mlcommons-loadgen')}", f"evaluator {env.get('evaluator')}"]
    return "; ".join(parts)
