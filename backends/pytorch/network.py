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
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from backends.model_config import ModelConfig

from backends.pytorch.cuda_graphs import GraphedForward
from backends.ssd.fold import fold_batchnorm

COMPILE_BACKEND = "inductor"   # torch.compile backend (tests swap in a faster-compiling one)


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


def network_runner(model: nn.Module, cfg: ModelConfig, device: torch.device) -> Callable:
    """A worker's own callable ``runner(x, mask) -> (locs, confs)`` around the shared ``model``."""
    network: Callable = model
    if cfg.compile:
        # With CUDA graphs every (batch, size) is captured, so static shapes cost nothing more; elsewhere
        # torch's automatic dynamic shapes stop recompiling once a second batch size has been seen.
        static = device.type == "cuda" and cfg.cuda_graphs
        network = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False if static else None)
    if cfg.cuda_graphs and device.type == "cuda":
        return GraphedForward(network, eager=model)
    return network


def allow_compiles(shapes: int) -> None:
    """Let torch.compile keep ``shapes`` compiled variants of the network (each warmed-up batch x input size)."""
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, shapes)
