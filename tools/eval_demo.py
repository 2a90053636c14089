"""Quick COCO mAP of a demo checkpoint on a COCO-format folder (single scale, CPU).

A progress check for demo training, without LoadGen or the image cache: the
product's own decode and post-processing (``backends/ssd``: default boxes,
softmax, score > 0.05, 200 best per class, NMS at IoU 0.5, 200 per image) and
the accuracy script's evaluation (``harness/accuracy``: the 7-float record,
labels to category ids as ``[0] + sorted(category ids)``, "not computed"
rather than a number when there is no ground truth).

Usage::

    python tools/eval_demo.py --checkpoint models/demo_ssd18_300.pt --data /tmp/demo_val \
        --num-images 500 --seed 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.ssd.boxes import class_scores, decode_boxes  # noqa: E402
from backends.ssd.default_boxes import default_boxes  # noqa: E402
from backends.ssd.model import SSDResNet  # noqa: E402
from backends.ssd.normalize import normalize  # noqa: E402
from backends.ssd.postprocess import postprocess as select_detections  # noqa: E402
from harness.accuracy.evaluate import evaluate_records  # noqa: E402
from harness.sut.response import to_record  # noqa: E402
from qsl.coco_layout import default_annotation_file  # noqa: E402
from tools.demo_data import DetectionSet, load_coco_set  # noqa: E402

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def postprocess(locs: torch.Tensor, confs: torch.Tensor, dboxes: torch.Tensor, score_threshold: float = 0.05,
                nms_iou: float = 0.5, max_per_class: int = 200, max_detections: int = 200) -> list[torch.Tensor]:
    """Detections per image from raw head outputs.

    Args:
        locs: Tensor[N, 4, B]; confs: Tensor[N, C, B] logits; dboxes: Tensor[B, 4] (cx, cy, w, h).

    Returns:
        N fp32 tensors [K, 6]: (x1, y1, x2, y2) normalized and clipped to [0, 1], score, label 1..C-1.
    """
    return select_detections(decode_boxes(locs, dboxes), class_scores(confs), score_threshold, nms_iou,
                             max_per_class, max_detections)


@torch.no_grad()
def predict(model: SSDResNet, data: DetectionSet, batch_size: int = 16, bf16: bool = True) -> list[torch.Tensor]:
    """Run the model over a whole set; returns per-image detections as :func:`postprocess`."""
    model.eval()
    dboxes = default_boxes(data.image_size)
    dets = []
    for start in range(0, len(data), batch_size):
        x = normalize(data.images[start:start + batch_size])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            locs, confs = model(x)
        dets += postprocess(locs, confs, dboxes)
    return dets


def coco_map(dets: list[torch.Tensor], data: DetectionSet, ann_file: Path) -> dict[str, float]:
    """The accuracy script's COCO stats over the images in ``data`` (the first ``len(data)`` of ``ann_file``):
    {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}.

    Raises :class:`~harness.accuracy.coco.MapNotComputed` when there is no ground truth to score.
    """
    records = {i: to_record(d, i) for i, d in enumerate(dets)}
    report = evaluate_records(records, ann_file, expected=range(len(data)))
    return dict(zip(STAT_NAMES, report.stats))


def load_demo_model(path: Path) -> SSDResNet:
    """Build the network a demo checkpoint describes and load its fp16 weights as fp32."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = SSDResNet(num_classes=ckpt["num_classes"], backbone=ckpt["backbone"], variant="training")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="COCO-format root; generated if missing")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--num-images", type=int, default=500, help="images to generate / evaluate")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed when generating")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not default_annotation_file(args.data, args.split).is_file():
        from qsl.synthetic.dataset import make_synthetic_coco
        make_synthetic_coco(args.data, args.num_images, seed=args.seed, split=args.split)
    data = load_coco_set(args.data, args.split, limit=args.num_images, progress=True)
    stats = coco_map(predict(load_demo_model(args.checkpoint), data), data, default_annotation_file(args.data, args.split))
    print(" ".join(f"{k}={v:.4f}" for k, v in stats.items()), f"images={len(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
