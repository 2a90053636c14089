"""Train the demo detector: SSD with a ResNet-18 backbone at 300x300 on synthetic COCO-format shapes.

The result, ``models/demo_ssd18_300.pt``, lets a fresh clone run the whole benchmark with
real detections and a meaningful mAP, without COCO or any download.

Assumptions:
- Data: ``qsl.synthetic.dataset.make_synthetic_coco`` output (COCO layout); the train split is
  generated with seed ``1000 + --seed`` so it never equals the default validation set (seed 0).
- Labels 1..K are ``sorted(category ids)``, background 0 (the accuracy script's mapping).
- Default boxes: ``default_boxes(300)`` (no steps), the order of the model's outputs.
- Training: the MLPerf SSD recipe (IoU matching 0.5, offsets 0.1 / 0.2, smooth-L1 +
  cross-entropy with 3:1 hard negatives), AdamW, linear warmup then cosine decay, bf16
  autocast where the CPU computes bf16 natively (backends/pytorch/precision.py; elsewhere
  it is emulated and slower than fp32). Progress (for the schedule) is the larger of steps done / ``--steps``
  and training time / ``--minutes``, so a run always ends on a fully decayed rate.
- Reproducible and resumable: the batch order and augmentation of step s depend only on
  (seed, s); ``--resume`` continues from ``<work-dir>/state.pt``, saved every ``--save-every`` steps.

Checkpoint (MLPerf training container): ``{"model": fp16 state dict, "label_map": {label: category id},
"categories", "backbone", "num_classes", "image_size", "variant", "dboxes_scale", "trained_steps",
"data"}``.

Usage::

    python tools/train_demo.py --out models/demo_ssd18_300.pt --train-images 4000 --minutes 55
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.pytorch.precision import native_bf16  # noqa: E402
from backends.ssd.default_boxes import default_boxes  # noqa: E402
from backends.ssd.model import SSDResNet  # noqa: E402
from backends.ssd.normalize import normalize  # noqa: E402
from harness.demo.command import DemoDataError  # noqa: E402
from ground.files import replace_atomically  # noqa: E402
from qsl.coco_layout import default_annotation_file  # noqa: E402
from tools.demo_data import DetectionSet, augment, load_coco_set  # noqa: E402
from tools.ssd_targets import build_targets, multibox_loss  # noqa: E402

TRAIN_SEED_OFFSET = 1000
BACKBONE = "resnet18"


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


def batch_indices(step: int, batch_size: int, num_images: int, seed: int) -> torch.Tensor:
    """Image indices of ``step``: consecutive slices of one seeded permutation per epoch."""
    idx = []
    pos = step * batch_size
    while len(idx) < batch_size:
        epoch, offset = divmod(pos, num_images)
        perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        take = perm[offset:offset + batch_size - len(idx)]
        idx += take.tolist()
        pos += len(take)
    return torch.tensor(idx)


def learning_rate(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warmup over the first ``warmup`` fraction, then cosine decay to 1% of ``base_lr``."""
    if progress < warmup:
        return base_lr * max(progress / warmup, 0.01)
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def train_step(model: SSDResNet, optimizer: torch.optim.Optimizer, data: DetectionSet, dboxes: torch.Tensor,
               step: int, batch_size: int, seed: int, bf16: bool) -> tuple[float, dict[str, float]]:
    """One optimizer step on the batch of ``step``; returns the loss and its parts."""
    model.train()
    idx = batch_indices(step, batch_size, len(data), seed)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    images, boxes = augment(data.images[idx], [data.boxes[i] for i in idx], gen)
    target_locs, target_labels = build_targets(boxes, [data.labels[i] for i in idx], dboxes)
    x = normalize(images)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        locs, confs = model(x)
    loss, parts = multibox_loss(locs, confs, target_locs, target_labels)
    if not torch.isfinite(loss):
        raise TrainError(f"loss became {float(loss)} at step {step}: lower --lr or resume from an earlier state")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    return float(loss.detach()), parts


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save ``obj`` to ``path`` crash-safely (ground/files.py: temporary name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    replace_atomically(path, buf.getvalue())


def export_checkpoint(model: SSDResNet, data: DetectionSet, path: Path, steps: int, data_desc: str) -> None:
    """Write the MLPerf-style container with fp16 weights (see the module docstring)."""
    state = {k: v.detach().half() if v.is_floating_point() else v.detach().clone()
             for k, v in model.state_dict().items()}
    save_atomic({"model": state, "label_map": data.label_map, "categories": data.categories,
                 "backbone": BACKBONE, "num_classes": len(data.categories) + 1, "image_size": data.image_size,
                 "variant": "training", "dboxes_scale": 1.0,
                 "trained_steps": steps, "data": data_desc}, path)


def ensure_data(root: Path, split: str, num_images: int, seed: int) -> None:
    """Generate the synthetic split under ``root`` unless its annotation file exists."""
    if default_annotation_file(root, split).is_file():
        return
    try:
        from qsl.synthetic.dataset import make_synthetic_coco
    except ImportError as exc:
        raise TrainError(f"no data at {root} and the synthetic generator is unavailable ({exc}); "
                         f"pass --data pointing to a COCO-format folder") from exc
    print(f"generating {num_images} synthetic {split} images (seed {seed}) in {root}", flush=True)
    make_synthetic_coco(root, num_images, seed=seed, split=split)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--work-dir", type=Path, default=Path("cache/train_demo"), help="data, training state")
    p.add_argument("--data", type=Path, default=None, help="COCO-format train root (default: <work-dir>/data)")
    p.add_argument("--split", default="train2017")
    p.add_argument("--train-images", type=int, default=4000, help="synthetic train images (generated if missing)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --epochs)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the train set")
    p.add_argument("--minutes", type=float, default=None, help="training-time budget, summed over resumes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="warmup, as a fraction of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=int, default=100, help="steps between training-state saves")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/state.pt")
    p.add_argument("--image-size", type=int, default=300, help="side of the square training images, pixels")
    p.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="bf16 autocast (default: on where the CPU computes bf16 natively)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    p.add_argument("--val-images", type=int, default=0, help="held-out synthetic images to evaluate on at the end")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.steps is None and args.epochs is None and args.minutes is None:
        p.error("give at least one of --steps, --epochs, --minutes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_root = args.data or args.work_dir / "data"
    data_seed = TRAIN_SEED_OFFSET + args.seed
    if args.data is None:
        ensure_data(data_root, args.split, args.train_images, data_seed)
    if args.bf16 is None:
        args.bf16 = native_bf16()[0]
    data = load_coco_set(data_root, args.split, args.image_size, limit=args.train_images, progress=args.progress)
    data_desc = (f"synthetic shapes: {len(data)} images, split {args.split}, seed {data_seed}" if args.data is None
                 else f"{len(data)} images of {args.split} from {data_root}")
    steps = args.steps
    if args.epochs is not None:
        epoch_steps = math.ceil(args.epochs * len(data) / args.batch_size)
        steps = epoch_steps if steps is None else min(steps, epoch_steps)
    budget_s = args.minutes * 60 if args.minutes is not None else None

    model = SSDResNet(num_classes=len(data.categories) + 1, backbone=BACKBONE, variant="training")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    dboxes = default_boxes(data.image_size)
    state_path = args.work_dir / "state.pt"
    step, elapsed = 0, 0.0
    if args.resume:
        if not state_path.is_file():
            raise TrainError(f"--resume given but {state_path} does not exist; drop --resume to start afresh")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_s"]
        print(f"resumed from {state_path} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)

    def progress_of(step: int, elapsed: float) -> float:
        fractions = [step / steps] if steps else []
        if budget_s:
            fractions.append(elapsed / budget_s)
        return max(fractions)

    def save_state() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed_s": elapsed, "args": vars(args)}, state_path)

    from tqdm import tqdm
    # Redirected output gets the lines below instead of a bar's carriage returns.
    bar = tqdm(total=steps, initial=step, unit="step", disable=not args.progress or not sys.stderr.isatty(),
               mininterval=5)
    ema, start = None, time.monotonic() - elapsed
    while progress_of(step, elapsed) < 1:
        lr = learning_rate(progress_of(step, elapsed), args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = train_step(model, optimizer, data, dboxes, step, args.batch_size, args.seed, args.bf16)
        step += 1
        elapsed = time.monotonic() - start
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", loc=f"{parts['loc']:.2f}", conf=f"{parts['conf']:.2f}",
                        lr=f"{lr:.1e}", img_s=f"{step * args.batch_size / max(elapsed, 1e-9):.1f}", refresh=False)
        if step % args.save_every == 0:
            save_state()
            if not args.progress or not sys.stderr.isatty():
                print(f"step {step} loss {ema:.4f} (loc {parts['loc']:.3f} conf {parts['conf']:.3f}) lr {lr:.2e} "
                      f"elapsed {elapsed / 60:.1f} min", flush=True)
    bar.close()
    save_state()
    export_checkpoint(model, data, args.out, step, data_desc)
    print(f"trained {step} steps ({step * args.batch_size} image-steps) in {elapsed / 60:.1f} min, "
          f"final loss (EMA) {ema if ema is not None else float('nan'):.4f}; wrote {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)
    if args.val_images:
        from tools.eval_demo import coco_map, load_demo_model, predict
        val_root = args.work_dir / "val_data"
        ensure_data(val_root, "val2017", args.val_images, 0)
        val = load_coco_set(val_root, "val2017", limit=args.val_images)
        stats = coco_map(predict(load_demo_model(args.out), val), val, default_annotation_file(val_root, "val2017"))
        print("held-out " + " ".join(f"{k}={v:.4f}" for k, v in stats.items()), f"images={len(val)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TrainError, DemoDataError) as exc:
        sys.exit(f"error: {exc}")
