"""Parsed command-line flags -> :class:`~harness.settings.config.Config`, shared by run.py's subcommands.

The flags themselves are in harness/settings/flags.py.

Precedence: dataclass defaults, then ``--config FILE``, then flags. Flags that
are not given stay ``None`` and do not override. The seed's flags keep their
names (``--image-size A B``, ``--dboxes-scale``, ``--dboxes-steps``,
``--small-mask``, ``--large-mask``, ``--use-filter``, ``--use-fp16``). Every
bad input (flag, file, folder) ends in :class:`UsageError`, which run.py
prints as one line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from backends.simulated.profiles import DEFAULT_PROFILE, PROFILES, DeviceTiming
from harness.settings.checkpoint_path import missing_config_checkpoint
from harness.settings.config import (
    Config,
    load_config,
    model_keys_in_file,
)
from harness.settings.model_checks import (
    check_geometry,
    single_scale_warnings,
    size_setting,
)
from harness.settings.flags import DEFAULT_USER_CONF, MAX_SIM_DEVICES, ROOT
from ground.errors import ConfigError, InputError
from qsl.coco_layout import default_annotation_file

log = logging.getLogger("harness")



class UsageError(InputError, ValueError):
    """A flag, file or folder the user gave is wrong; printed as one line, exit status 2."""


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``make_backend`` beyond the config: ``sim`` for --backend simulated, else none.

    Raises UsageError for a --sim-* flag without --backend simulated, or a bad value.
    """
    given = [f for f in ("sim_profile", "sim_batch_ms", "sim_devices") if getattr(args, f, None) is not None]
    if getattr(args, "backend", None) != "simulated":
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --backend simulated")
        return {}
    from backends.simulated.profiles import SimSettings
    if args.sim_profile is not None and args.sim_batch_ms is not None:
        raise UsageError("give --sim-profile or --sim-batch-ms A B, not both")
    devices = 1 if args.sim_devices is None else args.sim_devices
    if not 1 <= devices <= MAX_SIM_DEVICES:
        raise UsageError(f"--sim-devices must be 1 to {MAX_SIM_DEVICES}, got {devices}")
    if args.sim_batch_ms is not None:
        fixed, per_sample = args.sim_batch_ms
        if not (fixed >= 0 and per_sample >= 0) or fixed + per_sample <= 0:
            raise UsageError(f"--sim-batch-ms A B: milliseconds per batch and per sample, 0 or more and not both "
                             f"0, got {fixed:g} {per_sample:g}")
        timing = DeviceTiming(fixed, per_sample, "--sim-batch-ms")
    else:
        timing = PROFILES[args.sim_profile or DEFAULT_PROFILE]
    return {"sim": SimSettings(timing, devices)}


def _positive(name: str, value: Any) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{name} must be positive, got {value}")


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the config and check the files and folders the flags name."""
    for key in ("max_images", "batch_size", "num_classes", "dboxes_scale", "server_target_qps",
                "offline_expected_qps", "server_max_batch", "ray_workers", "ray_call_timeout_s"):
        _positive(_flag(key), getattr(args, key, None))
    if args.image_size is not None and any(s <= 0 for s in args.image_size):
        raise UsageError(f"--image-size must be two positive sizes in pixels, got {args.image_size}")
    if args.threads is not None and args.threads < 0:
        raise UsageError(f"--threads must be 0 or more, got {args.threads}")
    wait = getattr(args, "server_max_wait_ms", None)
    if wait is not None and not wait >= 0:
        raise UsageError(f"--server-max-wait-ms must be 0 or more milliseconds (0 = never wait for a batch to "
                         f"fill), got {wait}")
    if args.use_fp16 and args.precision not in (None, "fp16"):
        raise UsageError(f"--use-fp16 contradicts --precision {args.precision}; give one of them")
    model = _model_flags(args)
    data = {"data_dir": args.data, "annotation_file": args.annotation_file, "cache_dir": args.cache_dir,
            "max_images": args.max_images, "skip_bad_images": args.skip_bad_images}
    run = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
           "batch_invariant": args.batch_invariant, "executor": args.executor, "ray_address": args.ray_address,
           "ray_workers": args.ray_workers, "ray_call_timeout_s": args.ray_call_timeout_s}
    for key in ("scenario", "mode", "rules", "system_name", "server_target_qps", "offline_expected_qps",
                "server_max_batch", "server_max_wait_ms"):
        run[key] = getattr(args, key, None)
    run["output_dir"] = getattr(args, "output", None)
    run["user_conf"] = getattr(args, "user_conf", None)
    if args.config is not None and Path(args.config).is_dir():
        raise UsageError(f"--config {args.config} is a folder; give a TOML file such as configs/demo.toml")
    if args.config is not None and not Path(args.config).is_file():
        raise UsageError(f"--config {args.config}: file not found")
    try:
        config = load_config(args.config, {"model": model, "data": data, "run": run})
    except ConfigError as e:
        flags = [_flag(k) for section in (model, data, run) for k, v in section.items()
                 if v is not None and re.search(rf"\b(model|data|run)\.{k}\b", str(e))]
        raise ConfigError(f"{e}" + (f" (given by {', '.join(flags)})" if flags else "")) from None
    given = model_keys_given(args)
    check_geometry(config.model, size_setting(config.model, given),
                   network=getattr(args, "backend", "pytorch") == "pytorch")
    for warning in single_scale_warnings(config.model, lambda keys: _named(keys, args)):
        log.warning("%s", warning)
    return _check_paths(config, args)


# Config keys whose flag has another name than --key-with-dashes.
_FLAG_OF = {"checkpoint": "--model", "data_dir": "--data", "output_dir": "--output",
            "ray_call_timeout_s": "--ray-call-timeout"}


def _flag(key: str) -> str:
    """The flag that sets config key ``key`` ("num_classes" -> "--num-classes", "checkpoint" -> "--model")."""
    return _FLAG_OF.get(key, "--" + key.replace("_", "-"))


def _model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The [model] overrides the flags give (None = not given)."""
    return {"checkpoint": args.model, "random_weights": args.random_weights, "trust_pickle": args.trust_pickle,
            "image_size": args.image_size, "dboxes_scale": args.dboxes_scale, "dboxes_steps": args.dboxes_steps,
            "small_mask": args.small_mask, "large_mask": args.large_mask, "use_filter": args.use_filter,
            "precision": "fp16" if args.use_fp16 else args.precision, "backbone": args.backbone,
            "variant": args.variant, "num_classes": args.num_classes, "compile": args.compile,
            "channels_last": args.channels_last, "cuda_graphs": args.cuda_graphs}


def model_keys_given(args: argparse.Namespace) -> dict[str, str]:
    """{model key: where the user set it} for the keys a flag or the config file sets, flags winning.

    E.g. {"num_classes": "--num-classes 7", "image_size": "configs/x.toml [model] image_size = [300, 600]"}; keys left
    to their defaults are absent (a checkpoint may then fill them in, harness/settings/from_checkpoint.py).
    """
    given = model_keys_in_file(args.config)
    for key, value in _model_flags(args).items():
        if value is not None:
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else \
                ("" if isinstance(value, bool) else str(value))
            flag = "--precision / --use-fp16" if key == "precision" else _flag(key)
            given[key] = f"{flag} {shown}".rstrip()
    return given


def _named(keys: tuple[str, ...], args: argparse.Namespace) -> str:
    """The flags that set ``keys`` ("--small-mask and --large-mask"), else the config file's keys."""
    if any(getattr(args, k, None) is not None for k in keys) or args.config is None:
        return " and ".join(map(_flag, keys))
    return f"{args.config} " + " and ".join(keys)


def _missing_checkpoint(ckpt: str, args: argparse.Namespace) -> str:
    """Say where the missing checkpoint's path came from (flag or config key) and which files were tried."""
    path = Path(ckpt)
    what = "is a folder, not a checkpoint file" if path.is_dir() else "checkpoint file not found"
    if args.model is not None:
        tried = "" if path.is_absolute() else f" (looked in the working directory {Path.cwd()})"
        return f"--model {ckpt}: {what}{tried}"
    return missing_config_checkpoint(ckpt, args.config, what) + " or pass --model CKPT"


def _check_paths(config: Config, args: argparse.Namespace) -> Config:
    ckpt = config.model.checkpoint
    if ckpt is not None and not Path(ckpt).is_file():
        raise UsageError(_missing_checkpoint(ckpt, args))
    if config.data.data_dir is None and config.data.annotation_file is None:
        raise UsageError("--data DIR is required (a COCO-layout folder with annotations/instances_val2017.json)")
    if config.data.data_dir is not None and not Path(config.data.data_dir).is_dir():
        raise UsageError(f"--data {config.data.data_dir}: folder not found")
    ann = Path(config.data.annotation_file) if config.data.annotation_file else \
        default_annotation_file(config.data.data_dir)
    if not ann.is_file():
        raise UsageError(f"annotation file {ann} not found: --data must hold annotations/instances_val2017.json, "
                         "or pass --annotation-file")
    user_conf = Path(config.run.user_conf)
    if getattr(args, "user_conf", None) is None and config.run.user_conf == DEFAULT_USER_CONF.name:
        # Not chosen by flag or config: the repository's official settings, whatever the working directory
        # holds (an MLPerf inference checkout has a user.conf of its own).
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, user_conf=str(DEFAULT_USER_CONF)))
    elif getattr(args, "user_conf", None) is None and not user_conf.is_file() and (ROOT / user_conf).is_file():
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, user_conf=str(ROOT / user_conf)))
    return config
