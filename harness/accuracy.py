"""COCO mAP from LoadGen's ``mlperf_log_accuracy.json``.

Key assumption (as in MLPerf's accuracy-coco.py): a sample's ``qsl_idx`` is
the position of its image in the annotation file's ``images`` list. Labels are
class indices 1..C-1 and map to the annotation file's category ids sorted
ascending (``[0] + sorted ids``, MLPerf's ``--use-inv-map``).

Handled: duplicate qsl indices (MultiStream pads its sample sets; each index
is evaluated once), empty responses (the image counts, with no detections),
images the log does not cover (evaluation runs over the images present in the
log, as MLPerf's script does, and the number missing is reported), images the
cache skipped as unreadable (reported), a log cut short by an interrupted run
(the complete entries are read and the truncation reported), and a malformed
log (a clear error). Logs are streamed (harness/accuracy_log.py): memory grows with the
number of distinct images, not with the size of the log.

    python -m harness.accuracy --mlperf-accuracy-file F --coco-dir DIR \
        [--annotation-file F] [--output-file accuracy.txt] [--dump-detections F] [--use-pycocotools]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from harness.accuracy_log import AccuracyLogReader
from harness.coco_eval import (STAT_NAMES, AccuracyError, check_record, coco_result_list, evaluate_rows,
                               load_ground_truth, records_to_coco)


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

    @property
    def map(self) -> float:
        return self.stats[0]

    def lines(self) -> list[str]:
        out = [f"mAP={100.0 * self.map:.3f}%"]
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
        records: qsl_idx -> float32 [K, 7] response records (see harness/response.py).
        annotation_file: the COCO annotation JSON whose ``images`` list qsl_idx indexes.
        expected: qsl indices the run should have covered (for the missing count); default all images.
        skipped: file names the cache skipped, reported only.
        gt: an already loaded ground truth of the same library (saves reloading).
    """
    gt = gt if gt is not None else load_ground_truth(str(annotation_file), use_pycocotools)
    images = gt.dataset["images"]
    category_ids = sorted(c["id"] for c in gt.dataset["categories"])
    rows = records_to_coco(records, images, category_ids)
    if dump_detections:
        Path(dump_detections).write_text(json.dumps(coco_result_list(rows)))
    present = [images[i]["id"] for i in records]
    if not present:
        raise AccuracyError("the accuracy log has no samples: nothing to evaluate")
    stats = evaluate_rows(gt, rows, present, use_pycocotools)
    expected_set = set(range(len(images))) if expected is None else set(expected)
    return AccuracyReport(stats=stats, images_evaluated=len(present), detections=len(rows),
                          empty=sum(1 for r in records.values() if r.shape[0] == 0),
                          missing=len(expected_set - set(records)), skipped=list(skipped))


def evaluate_accuracy_log(log_file: str | Path, annotation_file: str | Path, expected: Sequence[int] | None = None,
                          skipped: Sequence[str] = (), use_pycocotools: bool = False,
                          dump_detections: str | Path | None = None) -> AccuracyReport:
    """Read (streaming, one entry at a time), decode and evaluate one ``mlperf_log_accuracy.json``."""
    gt = load_ground_truth(str(annotation_file), use_pycocotools)
    reader = AccuracyLogReader(log_file)
    records, duplicates, warnings = decode_entries(reader, len(gt.dataset["images"]))
    note = reader.note
    report = evaluate_records(records, annotation_file, expected, skipped, use_pycocotools, dump_detections, gt)
    report.duplicates = duplicates
    report.notes += warnings + ([note] if note else [])
    return report


def default_annotation_file(coco_dir: str | Path) -> Path:
    return Path(coco_dir) / "annotations" / "instances_val2017.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--mlperf-accuracy-file", required=True, help="LoadGen's mlperf_log_accuracy.json")
    p.add_argument("--coco-dir", required=True, help="data folder with annotations/instances_val2017.json")
    p.add_argument("--annotation-file", help="annotation JSON (default <coco-dir>/annotations/instances_val2017.json)")
    p.add_argument("--output-file", help="write the report here too (e.g. accuracy.txt)")
    p.add_argument("--dump-detections", help="write the COCO results list (JSON) here")
    p.add_argument("--max-images", type=int, help="the run used only the first N images (for the missing count)")
    p.add_argument("--use-pycocotools", action="store_true", help="evaluate with pycocotools (slower, same numbers)")
    args = p.parse_args(argv)
    ann = Path(args.annotation_file) if args.annotation_file else default_annotation_file(args.coco_dir)
    if not ann.is_file():
        print(f"error: annotation file {ann} does not exist (use --annotation-file)", file=sys.stderr)
        return 2
    try:
        report = evaluate_accuracy_log(args.mlperf_accuracy_file, ann,
                                       expected=range(args.max_images) if args.max_images else None,
                                       use_pycocotools=args.use_pycocotools, dump_detections=args.dump_detections)
    except AccuracyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = "\n".join(report.lines()) + "\n"
    print(text, end="")
    if args.output_file:
        Path(args.output_file).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
