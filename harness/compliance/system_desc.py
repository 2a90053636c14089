"""What a submission says about the system and the implementation, from what the runs recorded.

- ``systems/<system>.json``: the fields MLPerf Inference v2.0's checker requires
  (mlcommons/inference tag v2.0, commit 33894a19c4af6207f7cfdda75f84570f04836de5,
  ``tools/submission/submission-checker.py`` ``SYSTEM_DESC_REQUIRED_FIELDS`` and
  ``SYSTEM_DESC_REQUIED_FIELDS_SINCE_V1``). Filled from the performance run's
  ``run_status.json`` environment (CPU, logical CPUs, memory, GPUs, framework
  and package versions, operating system); every field the harness cannot know
  holds :data:`TO_FILL` and is listed for the submitter. ``status`` and
  ``system_type`` must hold one of the checker's values: they come from
  ``run.py package`` flags (defaults ``rdi``, research/development/internal,
  the only claim a harness can make about an unknown system, and ``edge``).
- ``measurements/.../<system>_<implementation>_<scenario>.json``: the checker's
  ``SYSTEM_IMP_REQUIRED_FILES`` fields. ``weight_transformations`` states what
  the PyTorch backend does at load: BatchNorm folded into the convolution before
  it (backends/ssd/fold.py), then every weight cast to the run's precision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TO_FILL = "TO BE FILLED BY THE SUBMITTER"
SYSTEM_STATUSES = ("available", "preview", "rdi")          # the checker's VALID_AVAILABILITIES
SYSTEM_TYPES = ("edge", "datacenter", "datacenter,edge")   # v2.0's valid system types (one order of the pair)
# Fields only the submitter knows (hardware details, notes on the machine).
_UNKNOWN = ("host_processors_per_node", "host_storage_capacity", "host_storage_type", "host_processor_frequency",
            "host_processor_caches", "host_memory_configuration", "host_processor_interconnect", "host_networking",
            "host_networking_topology", "cooling", "hw_notes")
_ACCELERATOR_DETAILS = ("accelerator_memory_capacity", "accelerator_frequency", "accelerator_host_interconnect",
                        "accelerator_interconnect", "accelerator_interconnect_topology",
                        "accelerator_memory_configuration", "accelerator_on-chip_memories")


def _gib(n_bytes: Any) -> str:
    return f"{int(n_bytes) / 2**30:.1f} GiB" if isinstance(n_bytes, (int, float)) and n_bytes > 0 else TO_FILL


def system_description(env: dict[str, Any], system: str, submitter: str, division: str, status: str,
                       system_type: str) -> dict[str, Any]:
    """``systems/<system>.json`` from a run's recorded environment ``env`` (see the module docstring)."""
    packages = env.get("packages") or {}
    accelerators = [str(a).partition(": ")[2] or str(a) for a in env.get("accelerators") or []]
    desc: dict[str, Any] = {
        "division": division, "submitter": submitter, "status": status, "system_type": system_type,
        "system_name": system, "number_of_nodes": 1,
        "host_processor_model_name": env.get("cpu") or TO_FILL,
        "host_processor_core_count": env.get("cpu_count") or TO_FILL,   # logical CPUs the OS reports
        "host_memory_capacity": _gib(env.get("memory_bytes")),
        "accelerators_per_node": len(accelerators),
        "accelerator_model_name": ", ".join(sorted(set(accelerators))) or "N/A",
        "framework": f"PyTorch {packages.get('torch') or '?'}, MLPerf LoadGen {packages.get('mlcommons-loadgen') or '?'}",
        "operating_system": env.get("platform") or TO_FILL,
        "other_software_stack": f"Python {env.get('python') or '?'}, torchvision {packages.get('torchvision') or '?'}, "
                                f"numpy {packages.get('numpy') or '?'}, {env.get('evaluator') or ''}".rstrip(", "),
        "sw_notes": f"ssd-large harness, backend {env.get('backend') or '?'}, precision {env.get('precision') or '?'}, "
                    f"{env.get('threads') or '?'} torch threads",
    }
    for key in _UNKNOWN:
        desc[key] = TO_FILL
    for key in _ACCELERATOR_DETAILS:
        desc[key] = TO_FILL if accelerators else "N/A"
    return desc


def fields_to_fill(desc: dict[str, Any]) -> list[str]:
    """The keys of ``desc`` the submitter must still fill in."""
    return [k for k, v in desc.items() if v == TO_FILL]


def implementation_description(env: dict[str, Any]) -> dict[str, str]:
    """The checker's measurements ``<system>_<implementation>_<scenario>.json`` from a run's environment."""
    precision = env.get("precision") or "fp32"
    if env.get("backend") == "pytorch":
        transformations = ("BatchNorm folded into the preceding convolution when loaded (w' = w * g / sqrt(v + eps), "
                           "b' = (b - m) * g / sqrt(v + eps) + beta, computed in fp32)"
                           + ("" if precision == "fp32" else f", then every weight cast to {precision}"))
    else:
        transformations = f"none: backend {env.get('backend')!r} runs no model"
    checkpoint = env.get("checkpoint")
    return {"input_data_types": "uint8",                  # the QSL hands resized uint8 RGB images to the SUT
            "retraining": "no",
            "starting_weights_filename": Path(checkpoint).name if checkpoint else TO_FILL,
            "weight_data_types": precision,
            "weight_transformations": transformations}
