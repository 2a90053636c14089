"""Load MLPerf SSD checkpoints unchanged into :class:`SSDResNet`.

Accepted files (SPEC.md section 1):
- the MLPerf training container ``{"model": state_dict, "label_map": ...}`` or a bare state dict;
- key prefixes none, ``1.`` (apex fp16 wrapper), ``module.1.`` (DDP over it), ``module.`` (DDP);
- tensors in fp16 or fp32 (cast to the model's dtype); ``num_batches_tracked`` may be missing;
- a whole pickled ``nn.Module`` (the zenodo ``resnet34-ssd1200.pytorch`` file), only with
  ``trust_pickle=True`` (the ``--trust-pickle`` flag): unpickling runs code from the file, and
  a warning says so. Classes that cannot be imported are replaced by empty module shells,
  which is enough to read their parameters. Without it, the error advises the flag only for a
  file whose pickle, read without running it (pickle_scan.py), is a torch.save of a module or
  of tensors beside other objects; any other file is "not a PyTorch checkpoint".

Files are first read with ``torch.load(weights_only=True)`` (memory-mapped when
they are zip archives, so reading what a file says about itself costs no copy of
its weights). Every failure is a :class:`CheckpointError` naming the file and
saying what it looks like.

What a checkpoint says about the model (:func:`read_facts`): the container may
record ``backbone``, ``num_classes``, ``variant``, ``image_size`` (the training
input size, pixels) and ``dboxes_scale`` next to ``model`` (the demo checkpoint
records the first three and its training size); the backbone and the class count
are otherwise read off the tensor shapes, and a pickled module's head strides
give its variant.
"""
from __future__ import annotations

import logging
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backends.ssd.model import BOXES_PER_LOCATION
from backends.ssd.pickle_scan import is_legacy_torch_file, why_refused
from ground.errors import InputError

log = logging.getLogger(__name__)

PREFIXES = ("module.1.", "module.", "1.")   # longest first
RECORDED = ("backbone", "num_classes", "variant", "image_size", "dboxes_scale")   # container keys read as facts
_SUMMARY = 5                                # names listed per error category
_warned: set[str] = set()                   # files unpickled with trust_pickle, warned about once each


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class _ShellModule(nn.Module):
    """Stands in for a pickled module class that cannot be imported here."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never run
        raise RuntimeError(f"{type(self).__name__} is an unpickled shell without code")


class _ShellUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_ShellModule,), {"__module__": module})


_shell_pickle = types.SimpleNamespace(Unpickler=_ShellUnpickler, load=pickle.load, __name__="shell_pickle")


def _torch_load(path: Path, trust_pickle: bool, zipped: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise CheckpointError(f"{path}: not a readable PyTorch file ({e})") from None
        if not trust_pickle:
            raise CheckpointError(why_refused(path, zipped)) from None
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("unpickling %s with --trust-pickle: this runs code from the file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_shell_pickle)
    except Exception as e:  # noqa: BLE001 - any unpickling failure becomes one clear message
        raise CheckpointError(f"{path}: could not unpickle it even with trust_pickle ({type(e).__name__}: {e})") \
            from None


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file and return (state dict with prefixes removed, info about the container)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, expected a file such as model300.pt")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the download or copy may have failed")
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a PyTorch file: PyTorch checkpoints are zip archives (starting "
                              f"'PK') or pickles (starting 0x80), this one starts with {head!r}")
    if head[:1] == b"\x80" and not is_legacy_torch_file(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it starts like a pickle (0x80) but not with "
                              "the magic number torch.save writes first (another program's pickle, or corrupt)")
    try:
        obj = _torch_load(path, trust_pickle, zipped=head[:2] == b"PK")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/pickle/EOF errors of corrupt files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
                              f"format): {type(e).__name__}: {e}") from None
    info: dict[str, Any] = {"path": str(path)}
    if isinstance(obj, nn.Module):
        info["container"] = f"pickled module {type(obj).__name__}"
        head = getattr(obj, "loc", None)
        if isinstance(head, nn.ModuleList) and len(head) and isinstance(head[0], nn.Conv2d):
            info["variant"] = "ssd1200" if head[0].stride[0] == 3 else "training"
        obj = obj.state_dict()
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        info["container"] = "dict['model']"
        info["other_entries"] = sorted(str(k) for k in obj if k != "model")
        info["recorded"] = {k: obj[k] for k in RECORDED if k in obj}
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        info["container"] = "dict['state_dict']"
        obj = obj["state_dict"]
    elif isinstance(obj, dict):
        info["container"] = "state dict"
    else:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict with a "
                              f"'model' entry")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (entries: {sorted(map(str, obj))[:_SUMMARY]})")
    prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in tensors)), "")
    info["prefix"] = prefix
    info["dtypes"] = sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()})
    return {k[len(prefix):]: v for k, v in tensors.items()}, info


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Guess num_classes, backbone and kind from an (unprefixed) state dict.

    Returns {"kind": "ssd" | "torchvision-classifier" | "unknown", "num_classes": int | None,
    "backbone": "resnet34" | "resnet18" | None}.
    """
    if "conf.0.weight" in state and "model.layer1.0.weight" in state:
        num_classes = state["conf.0.weight"].shape[0] // BOXES_PER_LOCATION[0]
        # torchvision layer1 (child 4 of model.layer1) has 3 blocks in resnet34, 2 in resnet18.
        backbone = "resnet34" if any(k.startswith("model.layer1.4.2.") for k in state) else "resnet18"
        return {"kind": "ssd", "num_classes": int(num_classes), "backbone": backbone}
    if "fc.weight" in state and "conv1.weight" in state:
        return {"kind": "torchvision-classifier", "num_classes": int(state["fc.weight"].shape[0]), "backbone": None}
    return {"kind": "unknown", "num_classes": None, "backbone": None}


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SUMMARY} more" if len(names) > _SUMMARY else ""
    return ", ".join(names[:_SUMMARY]) + more


def _diagnose(state: dict[str, torch.Tensor], model: nn.Module) -> str:
    arch = infer_architecture(state)
    if arch["kind"] == "torchvision-classifier":
        return (f"not an SSD checkpoint: it looks like a torchvision classification model "
                f"({arch['num_classes']} classes, keys conv1/layer1..4/fc)")
    if arch["kind"] == "unknown":
        return "it does not look like an SSD checkpoint (no model.layer1 / conf.0 keys)"
    hints = []
    want_classes = getattr(model, "num_classes", None)
    if want_classes is not None and arch["num_classes"] != want_classes:
        hints.append(f"it looks like a {arch['num_classes']}-class model, config says {want_classes} classes "
                     f"(set model.num_classes)")
    want_backbone = "resnet34" if any(k.startswith("model.layer1.4.2.") for k in model.state_dict()) else "resnet18"
    if arch["backbone"] != want_backbone:
        hints.append(f"it looks like a {arch['backbone']} backbone, config says {want_backbone} (set model.backbone)")
    return "; ".join(hints)


def load_checkpoint(path: str | Path, model: nn.Module, trust_pickle: bool = False) -> dict[str, Any]:
    """Load ``path`` into ``model`` (strict), casting tensors to the model's dtypes.

    Returns info: path, container, prefix, dtypes (as stored), missing_num_batches_tracked,
    num_classes, backbone, and variant when the file is a pickled module (its head strides tell). Raises CheckpointError with missing/unexpected keys and shape
    mismatches summarised, plus what the file looks like when that explains it.
    """
    state, info = read_state_dict(path, trust_pickle)
    want_variant = getattr(model, "variant", None)
    if info.get("variant") and want_variant and info["variant"] != want_variant:
        raise CheckpointError(f"{path} looks like the {info['variant']} variant (its loc heads have stride "
                              f"{3 if info['variant'] == 'ssd1200' else 1}), config says {want_variant}: "
                              f"set model.variant = \"{info['variant']}\"")
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    tracked = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k}: file {list(state[k].shape)} vs model {list(target[k].shape)}"
              for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
        hint = _diagnose(state, model)
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts)
                              + (f". Hint: {hint}" if hint else ""))
    cast = {k: v.to(target[k].dtype) for k, v in state.items()}
    for k in tracked:
        cast[k] = target[k]
    model.load_state_dict(cast, strict=True)
    arch = infer_architecture(state)
    info.update(missing_num_batches_tracked=len(tracked), num_classes=arch["num_classes"],
                backbone=arch["backbone"])
    return info


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint file says about the model it holds; None = it does not say."""

    path: str
    backbone: str | None = None
    num_classes: int | None = None
    variant: str | None = None
    training_size: int | None = None      # square input size the weights were trained at, pixels
    dboxes_scale: float | None = None
    recorded: frozenset[str] = field(default_factory=frozenset)   # facts the file records (others: from shapes)

    def source(self, name: str) -> str:
        """'recorded in the file' or 'read off its tensor shapes' for the fact ``name``."""
        return "recorded in the file" if name in self.recorded else "read off its tensor shapes"


def _recorded_facts(recorded: dict[str, Any]) -> dict[str, Any]:
    """The container's own entries that make sense as facts; anything else is not trusted."""
    out: dict[str, Any] = {}
    size = recorded.get("image_size")
    if isinstance(size, (list, tuple)) and size and all(s == size[0] for s in size):
        size = size[0]
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        out["training_size"] = size
    scale = recorded.get("dboxes_scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
        out["dboxes_scale"] = float(scale)
    for key, kind in (("backbone", str), ("variant", str), ("num_classes", int)):
        if isinstance(recorded.get(key), kind) and not isinstance(recorded.get(key), bool):
            out[key] = recorded[key]
    return out


def read_facts(path: str | Path, trust_pickle: bool = False) -> CheckpointFacts:
    """Read what ``path`` says about its model: recorded entries first, then the tensor shapes.

    Raises CheckpointError as :func:`read_state_dict` does, and when a recorded fact contradicts the
    tensors (e.g. ``num_classes`` 7 recorded beside heads for 81 classes).
    """
    state, info = read_state_dict(path, trust_pickle)
    facts = _recorded_facts(info.get("recorded", {}))
    recorded = set(facts)
    arch = infer_architecture(state)
    if arch["kind"] == "ssd":
        for key in ("backbone", "num_classes"):
            if key in facts and facts[key] != arch[key]:
                raise CheckpointError(f"{path} records {key} = {facts[key]!r} but its tensors are those of a "
                                      f"{arch[key]} {key.replace('_', ' ')} model: the file is inconsistent")
            facts[key] = arch[key]
    if info.get("variant"):
        if "variant" in facts and facts["variant"] != info["variant"]:
            raise CheckpointError(f"{path} records variant = {facts['variant']!r} but its heads are those of "
                                  f"{info['variant']}: the file is inconsistent")
        facts["variant"] = info["variant"]
    return CheckpointFacts(path=str(path), recorded=frozenset(recorded), **facts)


def describe(info: dict[str, Any]) -> str:
    """One readable line for the info :func:`load_checkpoint` returns."""
    parts = [f"{info.get('backbone') or 'unknown'} backbone", f"{info.get('num_classes')} classes"]
    size = info.get("recorded", {}).get("image_size")
    if size is not None:
        parts.append(f"trained at {size}")
    parts.append("/".join(d for d in info.get("dtypes", []) if d.startswith(("float", "bfloat"))) + " weights")
    where = info.get("container", "?") + (f", key prefix '{info['prefix']}'" if info.get("prefix") else "")
    return f"loaded checkpoint {info['path']}: {', '.join(parts)} ({where})"
