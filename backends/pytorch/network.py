"""The network as inference runs it: BatchNorm folded, cast, laid out, compiled, replayed as CUDA graphs.

One runner per worker (backends/pytorch/backend.py): each worker gets its own
torch.compile module and its own CUDA-graph runner around the one set of weights
its GPU holds. torch.compile is not thread-safe (pytorch/pytorch#118260,
#136833), so compiled code may run from several worker threads only when it was
captured into CUDA graphs at warm-up (then only graph replays run in the
threads, and a shape with no graph runs the uncompiled network); otherwise the
combination is refused (:func:`compile_refusal`).

CUDA math (:func:`configure_cuda_math`, torch's documented ``torch.backends``
switches): ``cudnn.benchmark`` is False by default and is turned on, so cuDNN
times its algorithms per shape, which happens during warm-up; ``cudnn.allow_tf32``
is True by default, which runs fp32 convolutions as TF32 on Ampere and later:
it is turned off, so "fp32" means IEEE fp32. fp16 and bf16 are not affected.

torch.compile (:class:`CompiledNetwork`): one compile per pass (input size and
mask), with the batch dimension dynamic (``maybe_mark_dynamic``; torch
specializes a batch of 1, so a pass compiles at most twice), and the input
sizes static (``dynamic=False``). CUDA graphs are still captured per shape.
Dynamo keeps compiled variants per code object (``forward``), and every
worker's module shares it: where torch.compile offers ``isolate_recompiles``
(torch 2.14 does), each worker gets its own limit of :data:`VARIANTS_PER_PASS`
x passes; otherwise the global limit is raised to cover every worker of every
GPU. A frame dynamo cannot compile (a limit reached, unsupported code) runs
eagerly; :func:`eager_frames` counts them (dynamo's ``frames`` counters) so the
warm-up can say so. :data:`COMPILES` counts the graphs handed to the compiler,
per device.
"""
from __future__ import annotations

import collections
import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from backends.model_config import ModelConfig

from backends.pytorch.cuda_graphs import GraphedForward
from backends.ssd.fold import fold_batchnorm

COMPILE_BACKEND = "inductor"   # torch.compile backend (tests swap in a faster-compiling one)
VARIANTS_PER_PASS = 2          # compiled variants of one pass: a batch of 1 (specialized) and any other batch
COMPILES: collections.Counter[str] = collections.Counter()   # graphs handed to the compiler, per device


def prepare_network(model: nn.Module, device: torch.device | str, dtype: torch.dtype,
                    channels_last: bool) -> nn.Module:
    """An eval-mode network as inference runs it: BatchNorm folded, on ``device``, in ``dtype``, laid out."""
    fold_batchnorm(model)
    model.to(device=device, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def configure_cuda_math() -> None:
    """cuDNN times its convolution algorithms per shape; fp32 convolutions stay IEEE fp32 (process-wide flags)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def compile_refusal(cfg: ModelConfig, workers: int, graphs: bool) -> str | None:
    """Why ``cfg.compile`` cannot run with ``workers`` compute threads (``graphs``: CUDA graphs on), or None."""
    if not cfg.compile or workers <= 1 or graphs:
        return None
    return (f"model.compile (--compile) without CUDA graphs would run compiled code from {workers} worker "
            "threads at once, which torch.compile does not support (pytorch/pytorch#118260): keep CUDA graphs "
            "on (drop --no-cuda-graphs) or drop --compile")


class CompiledNetwork:
    """One worker's ``torch.compile`` of the shared network: ``runner(x, mask)``, batch dimension dynamic.

    x: Tensor[N, 3, S, S] on ``device``. Compiles are counted in :data:`COMPILES` under ``str(device)``.
    """

    def __init__(self, model: nn.Module, device: torch.device, passes: int = 2) -> None:
        self.device = device
        self.module = torch.compile(model, backend=self._compile, dynamic=False, **_isolated(passes))

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        from torch._dynamo.backends.registry import lookup_backend
        COMPILES[str(self.device)] += 1
        return lookup_backend(COMPILE_BACKEND)(gm, example_inputs)

    def __call__(self, x: torch.Tensor, mask: Sequence[int]) -> Any:
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.module(x, mask)


def _isolated(passes: int) -> dict[str, Any]:
    """torch.compile's per-call recompile limit, where this torch has it (else the global one applies)."""
    if "isolate_recompiles" not in inspect.signature(torch.compile).parameters:
        return {}
    return {"isolate_recompiles": True, "recompile_limit": VARIANTS_PER_PASS * passes}


def network_runner(model: nn.Module, cfg: ModelConfig, device: torch.device, passes: int = 2) -> Callable:
    """A worker's own callable ``runner(x, mask) -> (locs, confs)`` around the shared ``model``.

    ``passes``: how many (input size, mask) passes the detector runs (its compile variants).
    """
    network: Callable = CompiledNetwork(model, device, passes) if cfg.compile else model
    if cfg.cuda_graphs and device.type == "cuda":
        return GraphedForward(network, eager=model)
    return network


def allow_compiles(variants: int) -> None:
    """Let dynamo keep ``variants`` compiled variants of the network in all (every worker of every GPU)."""
    import torch._dynamo.config as dynamo_config
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, variants)
    if not _isolated(1):   # no per-call limit: the global one covers every worker
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, variants)


def eager_frames() -> int:
    """Frames dynamo has failed to compile so far in this process (each then runs eagerly)."""
    from torch._dynamo.utils import counters
    return counters["frames"]["total"] - counters["frames"]["ok"]
