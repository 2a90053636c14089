"""COCO mAP from LoadGen's ``mlperf_log_accuracy.json``.

Key assumption (as in MLPerf's accuracy-coco.py): a sample's ``qsl_idx`` is
the position of its image in the annotation file's ``images`` list. Labels are
class indices 1..C-1 and map to the annotation file's category ids sorted
ascending (``[0] + sorted ids``, MLPerf's ``--use-inv-map``).

Handled: duplicate qsl indices (MultiStream pads its sample sets; each index
is evaluated once), empty responses (the image counts, with no detections),
images the log does not cover (evaluation runs over the images present in the
log, as MLPerf's script does; the mAP line then says INCOMPLETE and the script
exits 1 unless ``--allow-missing``), images the cache skipped as unreadable
(reported), a log cut short by an interrupted run (the complete entries are
read and the truncation reported), a malformed log or annotation file (a clear
error, exit 2), and no ground truth to score (COCOeval's -1: "not computed",
exit 1, never a number). Output files are proven writable before the log is
read, and written after the mAP is known. Logs are streamed
(harness/accuracy/log.py): memory grows with the number of distinct images,
not with the size of the log.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from harness.accuracy.coco import (
    STAT_NAMES,
    AccuracyError,
    MapNotComputed,
    check_record,
    coco_result_list,
    evaluate_rows,
    load_ground_truth,
    records_to_coco,
    why_no_map,
)
from harness.accuracy.log import AccuracyLogReader
from ground.errors import OutputError
from ground.files import write_text_atomic


@dataclass
class AccuracyReport:
    stats: list[float]                  # the 12 COCO stats; stats[0] = mAP@[.5:.95]
    images_evaluated: int
    detections: int
    empty: int = 0                      # samples with no detections
    duplicates: int = 0                 # repeated qsl indices, ignored
    missing: int = 0                    # expected images absent from the log
    skipped: list[str] = field(default_factory=list)  # images the cache could not read
    notes: list[str] = field(default_factory=list)
    expected_images: int = 0            # images the run should have covered (0 = evaluated + missing)
    not_computed: str | None = None     # why COCOeval gave no mAP (its -1), or None

    @property
    def map(self) -> float:
        return self.stats[0]

    @property
    def incomplete(self) -> str | None:
        """'INCOMPLETE, N images are missing from the log' when the log missed expected images, else None."""
        return f"INCOMPLETE, {self.missing} images are missing from the log" if self.missing else None

    def headline(self) -> str:
        """``mAP=xx.xxx%`` (MLPerf's parseable line), with the coverage when incomplete, or why there is none."""
        if self.not_computed:
            return f"mAP not computed: {self.not_computed}"
        line = f"mAP={100.0 * self.map:.3f}%"
        if self.incomplete:
            total = self.expected_images or self.images_evaluated + self.missing
            line += f" over {self.images_evaluated} of {total} images: {self.incomplete}"
        return line

    def lines(self) -> list[str]:
        out = [self.headline()]
        if not self.not_computed:   # COCOeval's -1 placeholders are no statistics
            out += [f"{name} = {value:.3f}" for name, value in zip(STAT_NAMES, self.stats)]
        out.append(f"images evaluated: {self.images_evaluated}, detections: {self.detections}, "
                   f"empty responses: {self.empty}, duplicate samples ignored: {self.duplicates}, "
                   f"images missing from the log: {self.missing}")
        if self.skipped:
            out.append(f"images skipped by the cache (unreadable): {len(self.skipped)}: "
                       + ", ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        out += self.notes
        return out


def read_accuracy_log(path: str | Path) -> tuple[list[dict], str | None]:
    """Load the log's entries into a list; a log cut short mid-write is read up to its last complete entry.

    Returns (entries, note) where note describes a repair, or None. For logs that may not fit in memory,
    iterate :class:`~harness.accuracy_log.AccuracyLogReader` instead (``evaluate_accuracy_log`` does).
    """
    reader = AccuracyLogReader(path)
    entries = list(reader)
    return entries, reader.note


def decode_entries(entries: Iterable[Mapping], num_images: int) -> tuple[dict[int, np.ndarray], int, list[str]]:
    """qsl_idx -> float32 [K, 7] records, the number of duplicates, and warnings."""
    records: dict[int, np.ndarray] = {}
    duplicates, mismatched = 0, 0
    for n, entry in enumerate(entries):
        try:
            idx, data = int(entry["qsl_idx"]), entry["data"]
            raw = bytes.fromhex(data)
        except (KeyError, TypeError, ValueError) as e:
            raise AccuracyError(f"accuracy log entry {n} is malformed ({type(e).__name__}: {e}); "
                                "expected {seq_id, qsl_idx, data as hex}") from None
        if not 0 <= idx < num_images:
            raise AccuracyError(f"accuracy log entry {n} has qsl_idx {idx}, but the annotation file has "
                                f"{num_images} images: the log belongs to another data set")
        if idx in records:  # MultiStream pads sample sets, so an index can appear twice
            duplicates += 1
            continue
        if len(raw) % 4:
            raise AccuracyError(f"accuracy log entry {n} (qsl_idx {idx}) has {len(raw)} bytes, not float32s")
        # Each detection is 7 float32: [qsl_idx, ymin, xmin, ymax, xmax, score, label],
        # box normalized to the image, label a class index 1..C-1; fewer than 7 = no detections.
        rec = check_record(np.frombuffer(raw, dtype=np.float32), idx)
        if rec.shape[0] and not np.all(rec[:, 0] == idx):
            mismatched += 1
        records[idx] = rec
    warnings = [f"warning: {mismatched} samples carry a qsl_idx in their records that differs from "
                "LoadGen's (LoadGen's is used)"] if mismatched else []
    return records, duplicates, warnings


def evaluate_records(records: Mapping[int, np.ndarray], annotation_file: str | Path,
                     expected: Sequence[int] | None = None, skipped: Sequence[str] = (),
                     use_pycocotools: bool = False, dump_detections: str | Path | None = None,
                     gt=None) -> AccuracyReport:
    """Evaluate decoded records over the images they cover.

    Args:
        records: qsl_idx -> float32 [K, 7] response records (see harness/sut/response.py).
        annotation_file: the COCO annotation JSON whose ``images`` list qsl_idx indexes.
        expected: qsl indices the run should have covered (for the missing count); default all images.
        skipped: file names the cache skipped, reported only.
        gt: an already loaded ground truth of the same library (saves reloading).

    The detections are written (``dump_detections``) after the evaluation, so a failed write
    (:class:`~harness.layout.OutputError`, carrying ``.report``) cannot lose the mAP: its message holds it.

    Raises:
        MapNotComputed: COCOeval had no ground truth to score (stats of -1); ``.report`` holds the rest.
    """
    gt = gt if gt is not None else load_ground_truth(annotation_file, use_pycocotools)
    images = gt.dataset["images"]
    category_ids = sorted(c["id"] for c in gt.dataset["categories"])
    rows = records_to_coco(records, images, category_ids)
    present = [images[i]["id"] for i in records]
    if not present:
        raise AccuracyError("the accuracy log has no samples: nothing to evaluate")
    stats = evaluate_rows(gt, rows, present, use_pycocotools)
    expected_set = set(range(len(images))) if expected is None else set(expected)
    report = AccuracyReport(stats=stats, images_evaluated=len(present), detections=len(rows),
                            empty=sum(1 for r in records.values() if r.shape[0] == 0),
                            missing=len(expected_set - set(records)), skipped=list(skipped),
                            expected_images=len(expected_set),
                            not_computed=why_no_map(gt, present, annotation_file) if stats[0] < 0 else None)
    if dump_detections:
        write_detections(rows, dump_detections, report)
    if report.not_computed:
        error = MapNotComputed(report.not_computed)
        error.report = report
        raise error
    return report


def write_detections(rows: np.ndarray, path: str | Path, report: AccuracyReport) -> None:
    """Write the COCO results list of ``rows`` (float64 [N, 7], see ``records_to_coco``) to ``path``.

    Raises:
        OutputError: the file cannot be written; the message keeps ``report``'s headline, ``.report`` the rest.
    """
    try:
        write_text_atomic(Path(path), json.dumps(coco_result_list(rows)))
    except OutputError as e:
        error = OutputError(f"{e}; the evaluation itself finished: {report.headline()}")
        error.report = report
        raise error from None


def evaluate_accuracy_log(log_file: str | Path, annotation_file: str | Path, expected: Sequence[int] | None = None,
                          skipped: Sequence[str] = (), use_pycocotools: bool = False,
                          dump_detections: str | Path | None = None) -> AccuracyReport:
    """Read (streaming, one entry at a time), decode and evaluate one ``mlperf_log_accuracy.json``."""
    gt = load_ground_truth(str(annotation_file), use_pycocotools)
    reader = AccuracyLogReader(log_file)
    records, duplicates, warnings = decode_entries(reader, len(gt.dataset["images"]))
    notes = warnings + ([reader.note] if reader.note else [])
    try:
        report = evaluate_records(records, annotation_file, expected, skipped, use_pycocotools, dump_detections, gt)
    except (MapNotComputed, OutputError) as e:   # evaluated: the report they carry gets the log's counts too
        if getattr(e, "report", None) is not None:
            e.report.duplicates, e.report.notes = duplicates, e.report.notes + notes
        raise
    report.duplicates = duplicates
    report.notes += notes
    return report
