"""Every check that needs no model, made before the model is built: bad input costs seconds, not minutes.

``run.py`` (benchmark runs and ``evaluate``) and the demo call
:func:`check_inputs` between parsing the flags and building the backend. In
order, cheapest first:

1. LoadGen's inputs (:func:`check_loadgen_inputs`, no torch): a stray
   ``audit.config`` in the working directory, the user.conf of every run the
   mode makes (each line checked), the output folder (writable, and not being
   written by another run); and a warning when no line of user.conf applies to
   this model.
2. A checkpoint or an explicit ``random_weights`` for the PyTorch backend.
3. The annotation file: COCO structure, every value the QSL, the box
   conversion and COCOeval read (harness/accuracy/annotation_fields.py), no
   repeated ids (torch is imported from here on); enough images for TEST04-A
   when the mode runs it.
4. The checkpoint's own facts: backbone, class count, variant, training size
   (harness/settings/from_checkpoint.py), then the geometry again (a variant
   or a size may have changed).
5. The cache: when sizes must be prepared, the image folder exists and the
   disk has room (:func:`qsl.cache.prepare.check_can_prepare`).
6. For runs that compute an mAP, the class count against the annotation
   file's categories; ``--device cuda`` without a GPU.

:func:`check_inputs` returns the config with the checkpoint's facts filled in.
"""
from __future__ import annotations

import logging
from typing import Mapping

from harness.compliance.audit import check_audit_samples, check_no_stray_audit_config
from harness.results.layout import exclusive_scenario, scenario_dir
from harness.settings.config import Config, RunConfig
from harness.settings.from_checkpoint import apply_checkpoint
from harness.settings.loadgen import LOADGEN_MODEL, make_test_settings
from harness.settings.model_checks import check_geometry, size_setting
from harness.settings.rules import rules_for
from harness.settings.user_conf import parse_user_conf, unused_file_warning
from ground.errors import ConfigError

log = logging.getLogger("harness")

# The LoadGen runs each --mode makes, in order; submission adds the rules profile's audits (mode_runs).
MODE_RUNS = {"accuracy": ("accuracy",), "performance": ("performance",),
             "submission": ("accuracy", "performance"), "find-peak": ("find-peak",)}


def mode_runs(run: RunConfig) -> tuple[str, ...]:
    """The LoadGen runs ``run.mode`` makes, in order: submission runs the audits of ``run.rules`` last."""
    audits = rules_for(run.rules).audits if run.mode == "submission" else ()
    return MODE_RUNS[run.mode] + audits


def check_loadgen_inputs(config: Config) -> None:
    """audit.config, the user.conf of every run of ``config.run.mode`` and the output folder; no torch.

    Raises AuditConfigError, SettingsError or OutputError naming the file or folder.
    """
    run = config.run
    check_no_stray_audit_config()
    for mode in mode_runs(run):
        make_test_settings(run.user_conf, run.scenario, mode, run)
    with exclusive_scenario(scenario_dir(run.output_dir, run.system_name, run.scenario)):
        pass   # created, writable, and no other run holds it right now


def check_inputs(config: Config, given: Mapping[str, str], backend: str = "pytorch", loadgen: bool = True) -> Config:
    """Check everything about ``config`` that needs no model; return it with the checkpoint's facts filled in.

    Args:
        given: {model key: where the user set it} (harness.settings.cli.model_keys_given).
        backend: the --backend kind; only "pytorch" needs weights and the SSD's geometry.
        loadgen: a LoadGen run (False for ``run.py evaluate``, which has no user.conf or output folder).
    """
    if loadgen:
        check_loadgen_inputs(config)
        warning = unused_file_warning(parse_user_conf(config.run.user_conf), LOADGEN_MODEL)
        if warning:
            log.warning("%s", warning)
    model = config.model
    if backend == "pytorch" and not model.checkpoint and not model.random_weights:
        raise ConfigError("no checkpoint given: pass --model CKPT (an MLPerf checkpoint such as model700.pt, or the "
                          "demo's models/demo_ssd18_300.pt), or --random-weights to run on untrained weights "
                          "(for speed measurements: the detections mean nothing)")
    from harness.accuracy.coco import read_annotations
    from qsl.coco_layout import find_annotation_file
    from qsl.cache.prepare import check_can_prepare
    data = config.data
    ann = find_annotation_file(data.data_dir, data.annotation_file)
    doc = read_annotations(ann)
    categories = len(doc["categories"])
    if loadgen and "TEST04-A" in mode_runs(config.run):   # before the model loads (LoadGen would crash)
        images = len(doc["images"]) if data.max_images is None else min(len(doc["images"]), data.max_images)
        settings = make_test_settings(config.run.user_conf, config.run.scenario, "TEST04-A", config.run)
        if settings.performance_sample_count_override:
            check_audit_samples(("TEST04-A",), settings.performance_sample_count_override, images)
    config = apply_checkpoint(config, given)
    if backend == "pytorch":
        check_geometry(config.model, size_setting(config.model, given))
    check_can_prepare(data.data_dir, config.model.sizes, data.cache_dir, data.annotation_file, data.max_images,
                      annotations=doc)
    del doc
    if not loadgen or "accuracy" in mode_runs(config.run):
        from harness.run.dataset import Dataset, check_num_classes
        check_num_classes(config.model.num_classes, Dataset(qsl=None, annotation_file=ann, num_categories=categories))
    # With --executor ray the GPUs are the cluster's, checked when its workers are placed (backends/ray/).
    if config.run.device == "cuda" and backend == "pytorch" and config.run.executor == "local":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available; use --device cpu or auto")
    return config
