"""Precision "auto": fp16 on CUDA, bf16 only on a CPU that computes it natively, fp32 elsewhere; said and recorded."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import backends.pytorch.precision as precision
from backends.pytorch.precision import CpuSignals, choose_precision, native_bf16

ROOT = Path(__file__).resolve().parent.parent
# An AVX-512 CPU with native bf16 (this project's machines), as torch sees it with nothing capped.
NATIVE = CpuSignals(arch="x86", flags=frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"}), onednn_bf16=True,
                    onednn_max_isa=None, aten_capability="AVX512")


@pytest.mark.parametrize("cpu, expected, why", [
    (NATIVE, "bf16", "avx512_bf16"),
    (dataclasses.replace(NATIVE, flags=frozenset({"avx2", "amx_bf16"})), "bf16", "amx_bf16"),
    # An AVX2-only EPYC: no bf16 instructions; oneDNN says so too.
    (dataclasses.replace(NATIVE, flags=frozenset({"avx2", "fma"}), onednn_bf16=False, aten_capability="AVX2"),
     "fp32", "no avx512_bf16 or amx_bf16"),
    # AVX-512 without bf16 (Skylake): oneDNN still reports bf16, but emulates it.
    (dataclasses.replace(NATIVE, flags=frozenset({"avx512f", "avx512bw"})), "fp32", "no avx512_bf16 or amx_bf16"),
    # The emulation of an AVX2-only CPU on an AVX-512 one: either cap alone is enough to say no.
    (dataclasses.replace(NATIVE, onednn_max_isa="AVX2", onednn_bf16=False), "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
    (dataclasses.replace(NATIVE, onednn_max_isa="AVX512_CORE"), "fp32", "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    (dataclasses.replace(NATIVE, aten_capability="AVX2"), "fp32", "at AVX2 (ATEN_CPU_CAPABILITY)"),
    (dataclasses.replace(NATIVE, onednn_max_isa="AVX512_CORE_AMX"), "bf16", "avx512_bf16"),
    (dataclasses.replace(NATIVE, onednn_bf16=False), "fp32", "oneDNN reports no bf16"),
    (CpuSignals("arm", frozenset({"asimd", "bf16"}), True, None, "SVE256"), "bf16", "bf16"),
    (CpuSignals("arm", frozenset({"asimd"}), False, None, "DEFAULT"), "fp32", "no bf16 instructions"),
    (CpuSignals("riscv64", frozenset(), False, None, "DEFAULT"), "fp32", "riscv64"),
])
def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(cpu, expected, why):
    choice = choose_precision("auto", "cpu", cpu)
    assert choice.precision == expected and why in choice.reason, choice
    assert choice.reason.startswith("auto: ")
    assert native_bf16(cpu)[0] == (expected == "bf16")


def test_auto_is_fp16_on_cuda_and_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(precision, "read_cpu_signals", lambda: pytest.fail("CPU signals read needlessly"))
    assert choose_precision("auto", "cuda") == precision.PrecisionChoice("fp16", "auto: fp16 on a CUDA GPU")
    for p in ("fp32", "bf16", "fp16"):
        assert choose_precision(p, "cpu") == precision.PrecisionChoice(p, "as configured")


def test_the_cpu_signals_come_from_torch_the_environment_and_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert precision._cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert precision._cpu_flags(tmp_path / "none") == frozenset()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert precision.read_cpu_signals().onednn_max_isa == "AVX2"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE")
    assert precision.read_cpu_signals().onednn_max_isa == "AVX512_CORE"


def test_the_emulation_of_an_avx2_cpu_chooses_fp32_in_a_fresh_interpreter():
    """ATen and oneDNN read their caps once, at start-up: a child process with them set sees an AVX2-only CPU."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("from backends.pytorch.precision import read_cpu_signals, choose_precision as c; "
            "s = read_cpu_signals(); print(s.aten_capability, s.onednn_bf16, c('auto', 'cpu', s).precision)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "False", "fp32"]


def test_the_backend_runs_the_choice_logs_it_and_the_run_records_it(monkeypatch, caplog):
    import torch

    from backends.model_config import ModelConfig
    from backends.pytorch.backend import PyTorchBackend
    from harness.results.environment import describe_environment, environment_line
    for cpu, dtype in ((NATIVE, torch.bfloat16), (dataclasses.replace(NATIVE, flags=frozenset()), torch.float32)):
        monkeypatch.setattr(precision, "read_cpu_signals", lambda cpu=cpu: cpu)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            backend = PyTorchBackend(ModelConfig(backbone="resnet18", num_classes=3, image_size=(257, 257)), "cpu")
            backend.load()
        assert backend.cfg.precision == str(dtype).replace("torch.bfloat16", "bf16").replace("torch.float32", "fp32")
        assert {p.dtype for p in backend.model.parameters()} == {dtype}
        assert f"precision {backend.cfg.precision} (auto: " in caplog.text
        env = json.loads(json.dumps(describe_environment(backend)))     # as run_status.json keeps it
        assert env["precision"] == backend.cfg.precision and env["precision_reason"] == backend.precision_reason
        assert f"precision {backend.cfg.precision} (auto: " in environment_line(env)


def test_explicit_bf16_on_a_cpu_without_it_warns(monkeypatch):
    from backends.model_config import ModelConfig
    from backends.pytorch.backend import PyTorchBackend
    monkeypatch.setattr(precision, "read_cpu_signals", lambda: dataclasses.replace(NATIVE, aten_capability="AVX2"))
    backend = PyTorchBackend(ModelConfig(backbone="resnet18", num_classes=3, image_size=(257, 257),
                                         precision="bf16"), "cpu")
    with pytest.warns(RuntimeWarning, match=r"bf16 is emulated on this CPU .*AVX2.*use precision auto or fp32"):
        backend.load()
