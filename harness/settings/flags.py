"""The command-line flags of run.py's benchmark command and of the subcommands that share them.

Only what the flags are, their help and their choices; turning parsed flags into a
:class:`~harness.settings.config.Config` (and every check of their values) is
harness/settings/cli.py. Flags that are not given stay ``None`` and do not override the config file.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from backends.model_config import BACKBONES, PRECISIONS, VARIANTS
from backends.simulated.profiles import DEFAULT_PROFILE, PROFILES
from harness.settings.config import BATCH_INVARIANT, DEVICES, EXECUTORS, MODES, SCENARIOS
from harness.settings.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_USER_CONF = ROOT / "user.conf"
MAX_SIM_DEVICES = 64


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (override the config file)")
    g.add_argument("--model", metavar="CKPT", help="MLPerf training checkpoint (model300.pt, ...); its recorded "
                   "backbone, class count and training size are used unless given")
    g.add_argument("--random-weights", action="store_true", default=None,
                   help="run without a checkpoint, on seeded random weights (speed only: detections mean nothing)")
    g.add_argument("--trust-pickle", action="store_true", default=None,
                   help="allow a checkpoint that is a whole pickled nn.Module (resnet34-ssd1200.pytorch); "
                        "reading it runs code from the file: only for files you trust")
    g.add_argument("--image-size", type=int, nargs=2, metavar=("S0", "S1"), help="two-scale input sizes")
    g.add_argument("--dboxes-scale", type=float, help="multiplies the default-box scales [21, 45, ..., 315]")
    g.add_argument("--dboxes-steps", type=int, nargs="+", metavar="STEP", help="6 default-box steps in pixels")
    g.add_argument("--small-mask", type=int, nargs="+", metavar="0/1", help="6 flags: feature maps used at S0")
    g.add_argument("--large-mask", type=int, nargs="+", metavar="0/1", help="6 flags: feature maps used at S1")
    g.add_argument("--use-filter", action="store_true", default=None, help="S0 keeps large, S1 small boxes")
    g.add_argument("--use-fp16", action="store_true", help="same as --precision fp16")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="network precision; auto (the default): fp16 on CUDA, bf16 on a CPU that computes it "
                        "natively (AVX512-BF16, AMX), fp32 on other CPUs")
    g.add_argument("--backbone", choices=BACKBONES)
    g.add_argument("--variant", choices=VARIANTS)
    g.add_argument("--num-classes", type=int, help="classes including background (81 for COCO)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network (slow first batches; compile time is logged)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout for the convolutions (default on)")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA only: replay the network as a CUDA graph per batch size (default on)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="COCO-layout folder (annotations/, val2017/)")
    g.add_argument("--annotation-file", metavar="FILE", help="default <data>/annotations/instances_val2017.json")
    g.add_argument("--cache-dir", metavar="DIR", help="preprocessed image cache (default <data>/ssd_cache)")
    g.add_argument("--max-images", type=int, metavar="N", help="use only the first N images")
    g.add_argument("--skip-bad-images", action="store_true", default=None, help="skip unreadable images")


def add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the workers run")
    g.add_argument("--executor", choices=EXECUTORS,
                   help="local = in this process (default); ray = one Ray actor per worker, on a Ray cluster")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="head of a running Ray cluster (host:6379, or auto); default: start a local Ray for the run")
    g.add_argument("--ray-workers", type=int, metavar="N",
                   help="Ray actors to start (default: one per GPU of the cluster, else one per node)")
    g.add_argument("--call-timeout", "--ray-call-timeout", type=float, metavar="S", dest="ray_call_timeout_s",
                   help="seconds one batch may take on a worker, local or Ray, before it counts as lost "
                        "(default: Server 10 x the latency bound, at least 5 s; others 600 s)")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config with [model], [data], [run] tables")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--threads", type=int, help="CPU threads for torch (0 = its default)")
    p.add_argument("--batch-invariant", choices=BATCH_INVARIANT,
                   help="run each image of a batch alone so its bytes do not depend on the batch (TEST01); "
                        "auto = on for a CPU only (default), off = batched throughput")
    p.add_argument("--batch-size", type=int, help="Offline batch size (also used by evaluate)")
    p.add_argument("--backend", choices=("pytorch", "null", "simulated"), default="pytorch",
                   help="null = fixed detections, no model (measures the harness itself); simulated = "
                        "simulated accelerators, no model (see --sim-*)")
    p.add_argument("--use-pycocotools", action="store_true", help="evaluate with pycocotools (slower)")
    add_executor_args(p)
    add_model_args(p)
    add_data_args(p)
    add_sim_args(p)


def add_sim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated accelerator (--backend simulated)", textwrap.fill(
        "A measuring instrument for the harness, not a model: each device holds a batch of b samples for "
        "A + B x b ms (sleeping) and returns made-up detections that depend only on the sample. It shows "
        "whether the harness keeps N devices of a given speed busy and answers Server queries inside the "
        "bound; its detections score no mAP.", width=76))
    g.add_argument("--sim-profile", choices=sorted(PROFILES),
                   help=f"a device timing derived from counted FLOPs (backends/simulated/profiles.py; default "
                        f"{DEFAULT_PROFILE}: " + "; ".join(f"{n}: {t.describe().split(' (')[0]}"
                                                          for n, t in sorted(PROFILES.items())) + ")")
    g.add_argument("--sim-batch-ms", type=float, nargs=2, metavar=("A", "B"),
                   help="your own device timing instead of a profile: A + B x batch milliseconds per batch")
    g.add_argument("--sim-devices", type=int, metavar="N",
                   help="simulated devices, each served by two workers as a GPU is (default 1)")


SUBCOMMANDS_HELP = """other commands (each has its own --help):
  run.py evaluate ...        COCO mAP of the model without LoadGen
  run.py demo                the embedded default: demo data and model shipped with the project
  run.py report DIR          rebuild report.md for earlier runs under DIR
  run.py verify DIR          re-verify the compliance audits under DIR
  run.py package RESULTS OUT the MLPerf submission tree of --mode submission runs"""


def benchmark_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Two-scale SSD under MLPerf LoadGen.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUBCOMMANDS_HELP)
    p.add_argument("--scenario", choices=SCENARIOS)
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--rules", choices=tuple(RULES),
                   help="the MLPerf round whose seeds, durations, latency bounds and audits apply "
                        "(default v2.0, the last round with ssd-resnet34; none = LoadGen 6.0.17's own)")
    p.add_argument("--output", metavar="DIR", help="results root (submission layout)")
    p.add_argument("--user-conf", metavar="FILE", help=f"LoadGen settings (default {DEFAULT_USER_CONF.name} "
                                                      "at the repository root)")
    p.add_argument("--system-name", help="<system> folder in the submission layout")
    p.add_argument("--server-target-qps", type=float, help="Server arrival rate (queries/s)")
    p.add_argument("--offline-expected-qps", type=float, help="Offline throughput hint (samples/s)")
    p.add_argument("--server-max-batch", type=int)
    p.add_argument("--server-max-wait-ms", type=float)
    add_common_args(p)
    return p
