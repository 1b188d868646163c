"""What the entry points share: the one `run_main` wrapper (logging, exit codes, the hard exit),
and the argument groups that more than one command takes.

Entry points parse their arguments into typed values and call one job; nothing imports them.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.base.devices import available_devices, load_device
from pipeline.base.errors import EXIT_USER_ERROR, UserError
from pipeline.base.paths import TUNING_LOGS
from pipeline.base.variant import QUANTIZE_MODES, Variant
from pipeline.farm.tracker import TrackerAddress, parse_address
from pipeline.frontend.models import ZOO_NAMES, load_model, parse_shape
from pipeline.job.build_job import JobSpec, run_job
from pipeline.quantization.observers import METHODS
from pipeline.quantization.stage import DEFAULT_MAX_DROP_POINTS, QuantizeOptions

EXIT_INTERRUPTED = 130


class HardExit(Exception):
    """Raised by a command body whose work is done but whose process must not linger:
    MetaSchedule's RPC runner may leave a worker thread retrying a stopped tracker forever."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _HumanFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def run_main(body: Callable[[], int], verbose: bool = False,
             interrupted: str = "interrupted") -> int:
    """Run a command body: progress and diagnostics on stderr through logging, a `UserError`
    (or an OS error at a path) as one paragraph and exit 2, Ctrl-C as exit 130, `HardExit`
    leaves at once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_HumanFormat("%(message)s"))
    loggers = [logging.getLogger("pipeline")]
    if verbose:
        loggers.append(logging.getLogger("tvm.s_tir.meta_schedule"))
    else:
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # at a path the user gave, or a full disk: theirs to fix
        if err.filename is None and err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}. Check the path, its permissions and the "
              f"free space, then run again.", file=sys.stderr)
        return EXIT_USER_ERROR
    except HardExit as leave:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(leave.status)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def build_main(args: argparse.Namespace, trials: int | None) -> int:
    """The body of pipeline.tune (trials None: the device's budget) and pipeline.build (0)."""

    def body() -> int:
        device = load_device(args.device)
        spec = JobSpec(device, load_model(args.model, args.input_shape), trials, tracker(args),
                       args.out, args.logs, quantize_options(args),
                       retune=getattr(args, "retune", False), transfer=args.transfer,
                       trained_cost_model=getattr(args, "trained_cost_model", True))
        result = run_job(spec)
        if result is None:  # interrupted: the logs are on disk and the farm is down
            raise HardExit(EXIT_INTERRUPTED)
        check = result.manifest.verification
        print(f"artifact: {result.artifact}")
        if check is not None:
            latency = ""
            if check.latency_ms_median is not None:
                how = (check.timing if check.timing and check.timing != "measured"
                       else "measured")
                latency = f", {check.latency_ms_median:.2f} ms median on the board ({how})"
            print(f"verified on a '{check.board}' board: max abs error "
                  f"{check.max_abs_error:.2e}, top-1 "
                  f"{'matches' if check.top1_matches_framework else 'DIFFERS from'} the "
                  f"framework{latency}")
            if check.reference_degenerate:
                print(f"  but the model's output {check.reference_degenerate}: the comparison "
                      f"proves little")
        return 0

    return run_main(body, getattr(args, "verbose", False),
                    "interrupted: nothing was packaged; finished tuning trials are in the logs")


def tracker(args: argparse.Namespace) -> TrackerAddress | None:
    """--tracker, checked in the command body so that a bad one is a one-paragraph error."""
    return parse_address(args.tracker) if args.tracker else None


def shape_arg(text: str):
    try:
        return parse_shape(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


MODEL_HELP = (f"zoo name ({', '.join(ZOO_NAMES)}), an .onnx file, or a PyTorch factory "
              f"package.module:function (needs --input-shape)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, metavar="DEVICE",
                        help=f"device class: {', '.join(available_devices())}, or a YAML file")
    parser.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    add_shape_and_logs_arguments(parser)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="artifact folder (default: artifacts/<device>/<model>-<variant>)")
    parser.add_argument("--no-transfer", dest="transfer", action="store_false",
                        help="kernels with no tuning records stay untuned (default: each gets "
                             "the fastest schedule of a kernel of its kind in the class's "
                             "other logs, re-fitted to its shape and measured on a board)")


def add_shape_and_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", type=shape_arg, metavar="N,C,H,W",
                        help="static input shape, e.g. 1,3,224,224 (default: the model's own)")
    parser.add_argument("--logs", type=Path, default=TUNING_LOGS, metavar="DIR",
                        help="root of the tuning logs (default: the repository's tuning_logs/)")


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """The --quantize family, shared by pipeline.tune and pipeline.build."""
    group = parser.add_argument_group(
        "quantization",
        "int8: post-training quantization calibrated on sample data (per-channel symmetric int8 "
        "weights rounded to fit the calibration data, one scale per activation tensor), computing "
        "int8 x int8 -> int32. fp16: only for device classes with fp16 arithmetic. The "
        "quantized model is measured against fp32 before tuning; an artifact that loses more "
        "than --max-accuracy-drop is not packaged. Data SOURCE: 'builtin' (crops of "
        "scikit-image's photos, image models), a folder of images, a .npy of inputs, or a .npz "
        "with 'inputs' and optional 'labels'.")
    group.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                       help="numeric format of the artifact (default: none, i.e. fp32)")
    group.add_argument("--calibration", default="builtin", metavar="SOURCE",
                       help="int8 calibration data (default: builtin)")
    group.add_argument("--calibration-method", choices=METHODS, default="mse",
                       help="how activation ranges are chosen: the largest value, a percentile "
                            "of |x|, the least KL divergence, or the least error power "
                            "(default: mse)")
    group.add_argument("--percentile", type=float, default=99.99, metavar="P",
                       help="with --calibration-method percentile: clip activations at this "
                            "percentile of |x| (default: 99.99)")
    group.add_argument("--calibration-count", type=int, default=256, metavar="N",
                       help="calibration inputs to use (default: 256; the weights' rounding "
                            "is fitted to them too, and fewer fit worse: see the README's "
                            "quantization results)")
    group.add_argument("--eval-data", metavar="SOURCE",
                       help="accuracy data (default: the calibration source; for builtin, other "
                            "crops). Images are also measured shifted: resized by scikit-image, "
                            "through sensor noise and JPEG, and for builtin on other photos; "
                            "the gate judges the worst set. With labels, the drop is in "
                            "accuracy points")
    group.add_argument("--eval-count", type=int, default=200, metavar="N",
                       help="accuracy inputs per evaluation set (default: 200)")
    group.add_argument("--keep-float", metavar="LAYER,...",
                       help="layers to leave in float, e.g. conv2d_0,matmul_0 (names are "
                            "printed by the accuracy fallback and stored in the manifest); "
                            "'' for none (default: the layers the int8 tuning logs were tuned "
                            "with, recorded in their quantization.json, else none)")
    group.add_argument("--fallback-limit", type=int, default=8, metavar="N",
                       help="most layers the accuracy fallback may keep in float (default: 8; "
                            "0 turns it off)")
    group.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                       help="refuse to package when accuracy drops by more (labels), or when "
                            "more than POINTS%% of top-1 classes change (default: the gate the "
                            "int8 tuning logs' quantization.json passed, else "
                            f"{DEFAULT_MAX_DROP_POINTS:g})")
    group.add_argument("--force", action="store_true",
                       help="package even when the drop exceeds --max-accuracy-drop (recorded "
                            "in the manifest)")


def quantize_options(args: argparse.Namespace) -> QuantizeOptions:
    keep = (None if args.keep_float is None else
            frozenset(name.strip() for name in args.keep_float.split(",") if name.strip()))
    return QuantizeOptions(
        variant=Variant.from_quantize(args.quantize), method=args.calibration_method,
        percentile=args.percentile, calibration=args.calibration,
        calibration_count=args.calibration_count, eval_data=args.eval_data,
        eval_count=args.eval_count, keep_float=keep, fallback_limit=args.fallback_limit,
        max_drop_points=args.max_accuracy_drop, force=args.force)
