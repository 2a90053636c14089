"""What a PyTorch file's pickle would import, read without running any of it.

``torch.load(weights_only=True)`` refuses every file that names more than
tensors, and its error reads alike for a whole pickled ``nn.Module`` (the
zenodo ``resnet34-ssd1200.pytorch``), for a checkpoint that also pickled its
training arguments, and for any bytes that merely start like a pickle. To
advise ``--trust-pickle`` only where it helps, this module walks the pickle's
opcodes with :mod:`pickletools`, which parses and never imports or calls, and
collects the globals (``module.name``) the pickle would import.

The two formats ``torch.save`` writes (assumed; torch 1.x to 2.x):

- legacy (the file starts with 0x80): a run of pickles, torch's magic number,
  the protocol version, system information, then the object; storages follow
  as raw bytes. A file whose first pickle is not the magic number is not a
  PyTorch file, whatever follows.
- zip (starts ``PK``): the object's pickle is the member ``<archive>/data.pkl``.

Either way the object's pickle is small (tensor data live outside it), so
reading it whole costs milliseconds; of a legacy file at most the first 64 MiB
are read.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torch.serialization import MAGIC_NUMBER

_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PICKLE_BYTES = 1 << 26             # the most of a legacy file read for its pickles (they are far smaller)
# Globals a plain checkpoint of tensors uses; anything else is code the file brings along.
_PLAIN = ("torch.", "collections.OrderedDict", "__builtin__.set", "builtins.set", "_codecs.encode")


@dataclass(frozen=True)
class PickleContents:
    """The globals (``module.name``) a file's object pickle imports, in order of first use."""

    globals: tuple[str, ...]

    @property
    def tensors(self) -> bool:
        """Whether it rebuilds tensors, as every ``torch.save`` of weights does."""
        return any(g.startswith("torch._utils._rebuild_") for g in self.globals)

    @property
    def module(self) -> bool:
        """Whether it holds ``torch.nn`` layers: a whole pickled ``nn.Module``."""
        return any(g.startswith("torch.nn.modules.") for g in self.globals)

    @property
    def foreign(self) -> tuple[str, ...]:
        """The globals beyond tensors and plain containers: classes and functions the file would run."""
        return tuple(g for g in self.globals if not g.startswith(_PLAIN) or g.startswith("torch.nn."))


def _globals(stream: io.BufferedIOBase) -> tuple[str, ...]:
    """The globals of the one pickle at ``stream``'s position (left just after its STOP); ValueError if corrupt."""
    found: list[str] = []
    strings: list[str] = []            # strings pushed so far, for STACK_GLOBAL (protocol 4+)
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(".".join(strings[-2:]))
        if name in _STRINGS:
            last = arg
            strings.append(str(arg))
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            if isinstance(last, str):
                strings.append(last)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        else:
            last = None
    return tuple(dict.fromkeys(found))


def _first_value(stream: io.BufferedIOBase) -> object:
    """The value of a pickle holding one integer (torch's magic number or protocol), else None."""
    values = [arg for op, arg, _ in pickletools.genops(stream) if op.name not in ("PROTO", "FRAME", "STOP")]
    return values[0] if len(values) == 1 else None


def is_legacy_torch_file(path: Path) -> bool:
    """Whether ``path`` (starting 0x80) opens with the magic number ``torch.save`` writes first."""
    try:
        with open(path, "rb") as f:
            return _first_value(io.BytesIO(f.read(64))) == MAGIC_NUMBER
    except (ValueError, EOFError, OSError):
        return False


def read_contents(path: Path, zipped: bool) -> PickleContents | None:
    """The globals of the object ``torch.save`` pickled into ``path``; None when the file is not such a save."""
    try:
        if zipped:
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)
                if member is None:
                    return None
                return PickleContents(_globals(io.BytesIO(z.read(member))))
        with open(path, "rb") as f:
            head = io.BytesIO(f.read(_PICKLE_BYTES))   # a corrupt length field then reads past the end, no more
        if _first_value(head) != MAGIC_NUMBER:
            return None
        _globals(head)                 # the protocol version
        _globals(head)                 # system information
        return PickleContents(_globals(head))
    except Exception:  # noqa: BLE001 - a corrupt file fails to parse in many ways; each means "not a save"
        return None


def why_refused(path: Path, zipped: bool) -> str:
    """Why ``path``, which ``torch.load(weights_only=True)`` refused, is not read without --trust-pickle:
    the flag is advised only for a torch.save of a whole module, or of tensors beside other objects."""
    contents = read_contents(path, zipped)
    if contents is None:
        return f"{path} is not a PyTorch checkpoint: its pickle is corrupt, truncated or not one torch.save writes"
    first = contents.foreign[0] if contents.foreign else "?"
    if contents.module:
        return (f"{path} is a whole pickled nn.Module (class {first}), not a state dict: reading it runs code "
                "from the file. If you trust its source, pass --trust-pickle")
    if contents.tensors:
        return (f"{path} holds pickled Python objects besides its tensors (first: {first}): reading it runs code "
                "from the file. If you trust its source, pass --trust-pickle")
    return f"{path} is not a checkpoint: it holds no tensors, only pickled Python objects (first: {first})"
