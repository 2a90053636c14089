"""The model settings a checkpoint records about itself, used when the user gave none.

A checkpoint knows its backbone and class count (recorded in the container,
or read off its tensor shapes), sometimes its variant, training input size and
default-box scale (:func:`backends.ssd.checkpoint.read_facts`). For each of
these the rule is:

- not given (no flag, no config key): the checkpoint's value is used, so
  ``--model models/demo_ssd18_300.pt`` alone runs the demo detector;
- given and contradicting a structural fact (backbone, class count, variant):
  an error before anything is built, since the weights could not load;
- given and contradicting what the weights were trained with (default-box
  scale against the training size): a warning naming both, since the run
  works but its boxes are not the ones the model learnt.

The training size sets ``image_size`` only when no size was given; running a
model at other sizes is what two-scale inference is for. Reading the facts
imports torch, so this comes after every check that needs none.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

from backends.model_config import ModelConfig
from harness.settings.config import Config
from ground.errors import ConfigError

log = logging.getLogger("harness")

STRUCTURAL = ("backbone", "num_classes", "variant")
REFERENCE_SIZE = 300          # dboxes_scale 1 is the SSD300 scale set; a model trained at T expects about T / 300
SCALE_TOLERANCE = 1.25        # a factor beyond which the scale is called a contradiction (700 -> 2 is within)


class CheckpointMismatch(ConfigError):
    """A setting given by flag or config contradicts what the checkpoint holds; the message names both."""


def apply_checkpoint(config: Config, given: Mapping[str, str]) -> Config:
    """``config`` with the checkpoint's facts filled in where ``given`` has no key.

    Args:
        given: {model key: where the user set it, e.g. "--num-classes" or "configs/x.toml [model] num_classes"}.

    Raises:
        CheckpointMismatch: a given backbone, class count or variant is not the checkpoint's.
        CheckpointError: the file cannot be read.
    """
    model = config.model
    if not model.checkpoint:
        return config
    from backends.ssd.checkpoint import read_facts
    facts = read_facts(model.checkpoint, model.trust_pickle)
    changes: dict = {}
    for key in STRUCTURAL:
        value = getattr(facts, key)
        if value is None:
            continue
        if key in given and getattr(model, key) != value:
            raise CheckpointMismatch(
                f"{facts.path} holds a model with {key} = {value!r} ({facts.source(key)}), and {given[key]} "
                f"contradicts it: leave {key} out to use the checkpoint's, or give the checkpoint of such a model")
        changes[key] = value
    if facts.training_size and "image_size" not in given:
        changes["image_size"] = (facts.training_size, facts.training_size)
    if facts.dboxes_scale is not None and "dboxes_scale" not in given:
        changes["dboxes_scale"] = facts.dboxes_scale
    resolved = dataclasses.replace(model, **changes)
    used = {k: v for k, v in changes.items() if k not in given}
    if used:
        log.info("checkpoint %s: using its %s", facts.path, ", ".join(f"{k} = {_shown(v)}" for k, v in used.items()))
    warning = _scale_warning(resolved, facts, given)
    if warning:
        log.warning("%s", warning)
    return dataclasses.replace(config, model=resolved)


def _shown(value) -> str:
    return f"{list(value)}" if isinstance(value, tuple) else str(value)


def _scale_warning(model: ModelConfig, facts, given: Mapping[str, str]) -> str | None:
    """A warning when the run's default-box scale is not the one the checkpoint was trained with."""
    setting = given.get("dboxes_scale", f"the default dboxes_scale {model.dboxes_scale:g}")
    if facts.dboxes_scale is not None:
        if model.dboxes_scale == facts.dboxes_scale:
            return None
        return (f"{setting} gives default boxes {facts.path} was not trained with (it records dboxes_scale "
                f"{facts.dboxes_scale:g}), which costs most of the mAP; leave dboxes_scale out to use the checkpoint's")
    if not facts.training_size:
        return None
    expected = facts.training_size / REFERENCE_SIZE
    ratio = model.dboxes_scale / expected
    if 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        return None
    return (f"{setting} gives default boxes {ratio:.2g} times the size of those {facts.path} was trained with (it "
            f"was trained at {facts.training_size}x{facts.training_size}, {facts.source('training_size')}: about "
            f"{expected:.2g} times the SSD300 scales), which costs most of the mAP; pass --dboxes-scale "
            f"{expected:.2g} (the MLPerf model700.pt uses 2)")
