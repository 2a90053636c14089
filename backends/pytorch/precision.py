"""Which precision the network runs in when the configuration says ``auto``.

- CUDA: fp16 (every CUDA GPU computes it natively).
- CPU: bf16 only where the CPU computes it natively and torch will use those
  instructions, else fp32. Where bf16 is emulated it is several times slower
  than fp32: one 300+600 image of the demo network on one thread took 0.47 s
  in fp32 and 2.42 s in bf16 under this project's AVX2 emulation (below),
  2.37 s and 9.32 s on an AVX2-only EPYC; natively bf16 took 0.14 s, fp32 0.28 s.

Native bf16 on a CPU needs all of (:func:`native_bf16`):

1. the hardware: the ``avx512_bf16`` or ``amx_bf16`` flag on x86, ``bf16`` on
   Arm (``/proc/cpuinfo``; elsewhere no flags are known and fp32 is chosen);
2. oneDNN's bf16 path: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, and
   oneDNN not capped below ``AVX512_CORE_BF16`` by ``ONEDNN_MAX_CPU_ISA``
   (or the older ``DNNL_MAX_CPU_ISA``): under ``AVX512_CORE`` oneDNN still
   reports bf16 support, but emulates it;
3. on x86, ATen's kernels at AVX512 or above:
   ``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY``
   lowers.

So ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` makes an AVX-512 CPU
behave, and choose, like an AVX2-only one. The decision is a pure function of
:class:`CpuSignals`, which the tests fake.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA values) under which its bf16 kernels are emulated, not native.
EMULATED_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
NATIVE_BF16_FLAGS = {"x86": ("avx512_bf16", "amx_bf16"), "arm": ("bf16",)}
# ATen capabilities (torch.backends.cpu.get_cpu_capability()) whose vector kernels handle bf16 natively on x86.
X86_NATIVE_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX")


@dataclass(frozen=True)
class CpuSignals:
    """What this process's CPU and torch say about bf16 (see the module docstring)."""

    arch: str                        # "x86", "arm" or another platform.machine()
    flags: frozenset[str]            # CPU feature flags from /proc/cpuinfo (empty when unknown)
    onednn_bf16: bool                # torch.ops.mkldnn._is_mkldnn_bf16_supported()
    onednn_max_isa: str | None       # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) when set
    aten_capability: str             # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a backend runs in and, for people, why."""

    precision: str                   # "fp32", "bf16" or "fp16"
    reason: str                      # e.g. "auto: this CPU computes bf16 natively: avx512_bf16, ..."


def _arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return "x86"
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    return machine


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (x86 "flags", Arm "Features"); empty when unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_signals() -> CpuSignals:
    """This process's :class:`CpuSignals` (imports torch)."""
    import torch
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a torch without the check: assume no native path
        onednn = False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return CpuSignals(arch=_arch(platform.machine()), flags=_cpu_flags(), onednn_bf16=onednn,
                      onednn_max_isa=cap.strip().upper() if cap else None,
                      aten_capability=str(torch.backends.cpu.get_cpu_capability()))


def native_bf16(cpu: CpuSignals | None = None) -> tuple[bool, str]:
    """(whether ``cpu`` (default: this process's) computes bf16 natively in torch, the evidence in a few words)."""
    cpu = cpu or read_cpu_signals()
    wanted = NATIVE_BF16_FLAGS.get(cpu.arch)
    if wanted is None:
        return False, f"no known bf16 instructions on a {cpu.arch} CPU"
    have = [f for f in wanted if f in cpu.flags]
    if not have:
        return False, f"the CPU has no {' or '.join(wanted)} instructions"
    if cpu.onednn_max_isa in EMULATED_BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={cpu.onednn_max_isa} keeps oneDNN below its bf16 instructions"
    if not cpu.onednn_bf16:
        return False, "torch's oneDNN reports no bf16 support"
    if cpu.arch == "x86" and cpu.aten_capability.upper() not in X86_NATIVE_CAPABILITIES:
        return False, f"torch's CPU kernels run at {cpu.aten_capability} (ATEN_CPU_CAPABILITY), below AVX512"
    return True, f"{', '.join(have)}; oneDNN bf16 on; torch kernels at {cpu.aten_capability}"


def choose_precision(requested: str, device_type: str, cpu: CpuSignals | None = None) -> PrecisionChoice:
    """The precision to run ``requested`` ("auto", "fp32", "bf16", "fp16") in on ``device_type``.

    ``cpu``: the CPU's signals (default :func:`read_cpu_signals`, read only when they matter).
    """
    if requested != AUTO:
        return PrecisionChoice(requested, "as configured")
    if device_type == "cuda":
        return PrecisionChoice("fp16", "auto: fp16 on a CUDA GPU")
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on a {device_type} device")
    native, why = native_bf16(cpu)
    if native:
        return PrecisionChoice("bf16", f"auto: this CPU computes bf16 natively: {why}")
    return PrecisionChoice("fp32", f"auto: bf16 would be emulated here, several times slower than fp32: {why}")
