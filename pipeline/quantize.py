"""The quantize stage: fp32 as imported, int8 calibrated on sample data, or fp16; and the
quantized model's accuracy against the fp32 one, gated before any tuning time is spent.

int8 mechanics (calibration, the Relax rewrite) are in `pipeline.int8`. When int8 loses more
than allowed on the evaluation data, the accuracy fallback keeps layers in float, a few more at a
time, up to `fallback_limit` layers. The figures are then measured on the data that chose the
fallback: benchmarks measure on other inputs (bench/int8_efficientnet_lite0.py does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from pipeline import accuracy, int8
from pipeline.artifact import Accuracy, DataInfo, Quantization
from pipeline.calibration import calibrate
from pipeline.datasets import CALIBRATION_SEED, EVALUATION_SEED, Dataset, load_dataset
from pipeline.devices import DeviceConfig
from pipeline.errors import UserError
from pipeline.importer import ImportedModel
from pipeline.lowering import compile_for_host
from pipeline.models import LoadedModel

Mode = Literal["none", "int8", "fp16"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class QuantizeOptions:
    mode: Mode = "none"
    method: int8.Method = "mse"
    percentile: float = 99.99
    calibration: str = "builtin"
    calibration_count: int = 256
    eval_data: str | None = None  # None: the calibration source (builtin: other crops)
    eval_count: int = 200
    keep_float: frozenset[str] = field(default_factory=frozenset)
    fallback_limit: int = 8  # layers the accuracy fallback may keep in float (0: none)
    max_drop_points: float = 1.0
    force: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--quantize '{self.mode}' is not one of {', '.join(MODES)}.")
        if self.method not in int8.METHODS:
            raise UserError(f"--calibration-method '{self.method}' is not one of "
                            f"{', '.join(int8.METHODS)}.")
        if not 50.0 < self.percentile <= 100.0:
            raise UserError(f"--percentile {self.percentile} must be in (50, 100].")
        if self.calibration_count < 1 or self.eval_count < 1 or self.fallback_limit < 0:
            raise UserError("--calibration-count and --eval-count must be >= 1, "
                            "--fallback-limit >= 0.")
        if self.max_drop_points < 0:
            raise UserError(f"--max-accuracy-drop {self.max_drop_points} must be >= 0.")

    @property
    def variant(self) -> str:
        return "fp32" if self.mode == "none" else self.mode


@dataclass(frozen=True)
class Quantized:
    mod: object  # the Relax module to lower, tune and build
    variant: str
    quantization: Quantization | None  # None for fp32
    accuracy: Accuracy | None
    # The quantized model compiled for this machine: the reference that board runs of the
    # artifact are checked against (the framework computes no int8). None for fp32.
    reference: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    plan: int8.Int8Plan | None = None  # int8: the calibration, bundled with the artifact


def quantize(imported: ImportedModel, model: LoadedModel, device: DeviceConfig,
             options: QuantizeOptions, out=None) -> Quantized:
    out = out or sys.stderr
    if options.mode == "none":
        return Quantized(imported.mod, "fp32", None, None)
    _require_capability(device, options.mode)
    evaluation = _evaluation_data(model, options)
    reference = np.concatenate([model.reference_output(x[None]) for x in evaluation.inputs])
    if options.mode == "fp16":
        mod, info, plan = apply_fp16(imported.mod), Quantization("fp16", 0), None
        report, run = _measure(mod, evaluation, reference, options, out)
    else:
        mod, info, plan, report, run = _int8(imported, model, options, evaluation, reference,
                                             out)
    accuracy.require(report, options.variant)
    if not accuracy.within(report):
        print(f"warning: packaging with --force although the drop exceeds "
              f"{options.max_drop_points:g} points", file=out)
    return Quantized(mod, options.variant, info, report, run, plan)


def _measure(mod, evaluation: Dataset, reference: np.ndarray, options: QuantizeOptions, out):
    """The quantized model, compiled for this machine, against fp32 on the evaluation data."""
    print(f"measuring {options.variant} against fp32 on {len(evaluation)} inputs from "
          f"{evaluation.spec}", file=out)
    run = _host_runner(mod)
    outputs = np.concatenate([run(x[None]) for x in evaluation.inputs])
    report = accuracy.compare(reference, outputs, evaluation.labels, _info(evaluation),
                              options.max_drop_points, forced=options.force)
    print(f"  {accuracy.describe(report)}: {report.drop_points:.2f} points lost (allowed: "
          f"{report.max_drop_points:g})", file=out)
    return report, run


def requantize(mod, info: Quantization, plan: int8.Int8Plan | None):
    """The quantized module of an existing artifact, from its manifest and calibration record
    (no calibration, no accuracy run): what a rebuild compiles."""
    if info.mode == "fp16":
        return apply_fp16(mod)
    if plan is None:
        raise UserError("The int8 artifact has no calibration record; it cannot be rebuilt.")
    return int8.apply_int8(mod, plan, frozenset(info.float_layers))


def _require_capability(device: DeviceConfig, mode: str) -> None:
    if mode not in device.capabilities:
        have = ", ".join(sorted(device.capabilities)) or "none"
        hint = ("no fp16 arithmetic" if mode == "fp16" else "no int8 support")
        raise UserError(f"Device class '{device.name}' has {hint} (capabilities: {have} in "
                        f"{device.source}), so it gets no {mode} artifact. Use --quantize int8 "
                        f"or none, or a device class whose CPUs have {mode}.")


def apply_fp16(mod):
    """Convolutions and matmuls in fp16 (weights and accumulation); input and output stay
    float32."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.ToMixedPrecision(out_dtype="float16"),
        relax.transform.FoldConstant(),
    ])(mod)


def _int8(imported: ImportedModel, model: LoadedModel, options: QuantizeOptions,
          evaluation: Dataset, reference: np.ndarray, out):
    """Calibrate, rewrite, measure; while the drop is over the threshold, keep more layers in
    float (the accuracy fallback: 1, 2, 4, ... up to `fallback_limit`, input layers first, then
    the noisiest)."""
    calibration = load_dataset(options.calibration, model.input_shape, options.calibration_count,
                               CALIBRATION_SEED)
    print(f"calibrating int8 ({options.method}) on {len(calibration)} inputs from "
          f"{calibration.spec}", file=out)
    plan = calibrate(imported.mod, calibration.inputs, options.method, options.percentile,
                     out=out)
    keep = frozenset(options.keep_float)
    ranked = [name for name in int8.rank_by_noise(imported.mod, plan) if name not in keep]
    limit = min(options.fallback_limit, len(ranked))
    fallback: list[str] = []
    while True:
        mod = int8.apply_int8(imported.mod, plan, keep | frozenset(fallback))
        report, run = _measure(mod, evaluation, reference, options, out)
        if accuracy.within(report) or len(fallback) >= limit:
            break
        fallback = ranked[:min(2 * len(fallback) or 1, limit)]
        print(f"  accuracy fallback: keeping {', '.join(fallback)} in float", file=out)
    floats = tuple(sorted(keep | set(fallback), key=_layer_order))
    info = Quantization("int8", len(plan.layers) - len(floats), floats, tuple(fallback),
                        options.method,
                        options.percentile if options.method == "percentile" else None,
                        _info(calibration))
    return mod, info, plan, report, run


def _layer_order(name: str) -> tuple[str, int]:
    kind, _, index = name.rpartition("_")
    return kind, int(index)


def _evaluation_data(model: LoadedModel, options: QuantizeOptions) -> Dataset:
    spec = options.eval_data or options.calibration
    seed = EVALUATION_SEED if spec == "builtin" else CALIBRATION_SEED
    return load_dataset(spec, model.input_shape, options.eval_count, seed)


def _info(data: Dataset) -> DataInfo:
    return DataInfo(data.spec, len(data), data.sha256)


def _host_runner(mod) -> Callable[[np.ndarray], np.ndarray]:
    run = compile_for_host(mod)
    return lambda x: run(x)[0]


def add_quantize_arguments(parser) -> None:
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
    group.add_argument("--quantize", choices=MODES, default="none",
                       help="numeric format of the artifact (default: none, i.e. fp32)")
    group.add_argument("--calibration", default="builtin", metavar="SOURCE",
                       help="int8 calibration data (default: builtin)")
    group.add_argument("--calibration-method", choices=int8.METHODS, default="mse",
                       help="how activation ranges are chosen: the largest value, a percentile "
                            "of |x|, the least KL divergence, or the least error power "
                            "(default: mse)")
    group.add_argument("--percentile", type=float, default=99.99, metavar="P",
                       help="with --calibration-method percentile: clip activations at this "
                            "percentile of |x| (default: 99.99)")
    group.add_argument("--calibration-count", type=int, default=256, metavar="N",
                       help="calibration inputs to use (default: 256; the weights' rounding "
                            "is fitted to them too, and fewer fit worse: EfficientNet-Lite0 "
                            "loses 2.7 dB of SQNR with 64)")
    group.add_argument("--eval-data", metavar="SOURCE",
                       help="accuracy data (default: the calibration source; for builtin, other "
                            "crops). With labels, the drop is in accuracy points")
    group.add_argument("--eval-count", type=int, default=200, metavar="N",
                       help="accuracy inputs to use (default: 200)")
    group.add_argument("--keep-float", default="", metavar="LAYER,...",
                       help="layers to leave in float, e.g. conv2d_0,matmul_0 (names are "
                            "printed by the accuracy fallback and stored in the manifest)")
    group.add_argument("--fallback-limit", type=int, default=8, metavar="N",
                       help="most layers the accuracy fallback may keep in float (default: 8; "
                            "0 turns it off)")
    group.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                       help="refuse to package when accuracy drops by more (labels), or when "
                            "more than POINTS%% of top-1 classes change (default: 1.0)")
    group.add_argument("--force", action="store_true",
                       help="package even when the drop exceeds --max-accuracy-drop (recorded "
                            "in the manifest)")


def options_from_args(args) -> QuantizeOptions:
    keep = frozenset(name.strip() for name in args.keep_float.split(",") if name.strip())
    return QuantizeOptions(
        mode=args.quantize, method=args.calibration_method, percentile=args.percentile,
        calibration=args.calibration, calibration_count=args.calibration_count,
        eval_data=args.eval_data, eval_count=args.eval_count, keep_float=keep,
        fallback_limit=args.fallback_limit, max_drop_points=args.max_accuracy_drop,
        force=args.force)
