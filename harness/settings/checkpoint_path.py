"""Where a config file's relative ``checkpoint`` is found, and the error that names every place tried."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # the folder holding run.py, configs/ and models/


def checkpoint_places(checkpoint: str, config_file: str | Path) -> list[Path]:
    """Where a config file's ``checkpoint`` is looked for, in order: a relative path in the working directory,
    beside the config file, then in the project folder (the one holding run.py), so that a config copied
    elsewhere still finds ``models/...``; an absolute path only where it says."""
    ckpt = Path(checkpoint).expanduser()
    if ckpt.is_absolute():
        return [ckpt]
    places: list[Path] = []
    for place in (ckpt, Path(config_file).parent / ckpt, PROJECT_ROOT / ckpt):
        if all(place.absolute() != p.absolute() for p in places):
            places.append(place)
    return places


def missing_config_checkpoint(checkpoint: str, config_file: str | Path, what: str = "checkpoint file not found"
                              ) -> str:
    """The error for a config file's checkpoint that is in none of :func:`checkpoint_places`: every place tried."""
    tried = ", ".join(str(p.absolute()) for p in checkpoint_places(checkpoint, config_file))
    return (f"{config_file}: [model] checkpoint = {checkpoint!r}: {what}; tried {tried} (a relative path is looked "
            "up in the working directory, beside the config file, then in the project folder); correct it in the "
            "config file")
