"""The accuracy script (``python -m harness.accuracy``): COCO mAP from LoadGen's ``mlperf_log_accuracy.json``.

    python -m harness.accuracy --mlperf-accuracy-file F --coco-dir DIR [--annotation-file F]
        [--output-file accuracy.txt] [--dump-detections F] [--max-images N] [--allow-missing] [--use-pycocotools]

Key assumption (as in MLPerf's accuracy-coco.py): a sample's ``qsl_idx`` is
the position of its image in the annotation file's ``images`` list; what is
handled, and how, is in harness/accuracy/evaluate.py. It prints one parseable
line ``mAP=xx.xxx%`` and the 12 COCO statistics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.accuracy.coco import AccuracyError, MapNotComputed
from harness.accuracy.evaluate import evaluate_accuracy_log
from ground.errors import OutputError
from ground.files import check_output_file, write_text_atomic
from qsl.coco_layout import default_annotation_file


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 1 no mAP, or images missing from the log (without --allow-missing); 2 bad input."""
    p = argparse.ArgumentParser(prog="python -m harness.accuracy", description="COCO mAP from LoadGen's mlperf_log_accuracy.json.")
    p.add_argument("--mlperf-accuracy-file", required=True, help="LoadGen's mlperf_log_accuracy.json")
    p.add_argument("--coco-dir", required=True, help="data folder with annotations/instances_val2017.json")
    p.add_argument("--annotation-file", help="annotation JSON (default <coco-dir>/annotations/instances_val2017.json)")
    p.add_argument("--output-file", help="write the report here too (e.g. accuracy.txt)")
    p.add_argument("--dump-detections", help="write the COCO results list (JSON) here")
    p.add_argument("--max-images", type=int, help="the run used only the first N images (for the missing count)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 although expected images are missing from the log (a subset evaluated on purpose)")
    p.add_argument("--use-pycocotools", action="store_true", help="evaluate with pycocotools (slower, same numbers)")
    args = p.parse_args(argv)
    ann = Path(args.annotation_file) if args.annotation_file else default_annotation_file(args.coco_dir)
    if not ann.is_file():
        print(f"error: annotation file {ann} does not exist (use --annotation-file)", file=sys.stderr)
        return 2
    code = 0
    try:
        for path, flag in ((args.output_file, "--output-file"), (args.dump_detections, "--dump-detections")):
            if path:
                check_output_file(path, flag)
        report = evaluate_accuracy_log(args.mlperf_accuracy_file, ann,
                                       expected=range(args.max_images) if args.max_images else None,
                                       use_pycocotools=args.use_pycocotools, dump_detections=args.dump_detections)
    except (MapNotComputed, OutputError) as e:   # with .report: evaluated, then no mAP or a failed write
        report = getattr(e, "report", None)
        if report is None or isinstance(e, OutputError):
            print(f"error: {e}", file=sys.stderr)
            code = 2
        if report is None:
            return code
    except AccuracyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = "\n".join(report.lines()) + "\n"
    print(text, end="")
    if args.output_file:
        try:
            write_text_atomic(Path(args.output_file), text)
        except OutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if code:
        return code
    if report.not_computed:
        print(f"error: mAP not computed: {report.not_computed}", file=sys.stderr)
        return 1
    if report.incomplete and not args.allow_missing:
        print(f"error: {args.mlperf_accuracy_file} covers {report.images_evaluated} of "
              f"{report.expected_images} images ({report.incomplete}): the mAP is not the data set's; "
              "rerun the accuracy run, or pass --allow-missing to accept the subset", file=sys.stderr)
        return 1
    return 0

