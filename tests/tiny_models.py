"""A tiny random-weight detector and a fixed input batch, shared by the precision and layout tests."""
from __future__ import annotations

import warnings

import torch

from backends.model_config import ModelConfig
from backends.pytorch.backend import PyTorchBackend

SIZE = 257   # the smallest input this SSD accepts


def tiny_backend(device: str = "cpu", **model: object) -> PyTorchBackend:
    """A loaded resnet18 SSD with 5 classes at SIZE, class head scaled so real detections appear; fp32 unless
    ``precision`` says otherwise (the reference the other precisions and layouts are compared with)."""
    cfg = ModelConfig(**{"backbone": "resnet18", "num_classes": 5, "image_size": (SIZE, SIZE), "precision": "fp32",
                         **model})
    backend = PyTorchBackend(cfg, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # random weights, fp16 on a CPU
        backend.load()
    with torch.no_grad():   # smaller class logits: a spread of scores, a few confident boxes
        for conv in backend.model.conf:
            conv.weight.mul_(0.2)
    return backend


def tiny_inputs() -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Two seeded uint8 images at SIZE and their (made-up) original sizes."""
    g = torch.Generator().manual_seed(0)
    return ({SIZE: torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)},
            torch.tensor([[480, 640], [427, 640]]))
