"""The quantize stage: fp32 as imported, int8 calibrated on sample data, or fp16; and the
quantized model's accuracy against the fp32 one, gated before any tuning time is spent.

Accuracy is measured on every evaluation set (the data as given and its shifted copies:
pipeline.quantization.datasets.evaluation_sets) and judged by the worst of them. When int8
loses more than allowed there, the accuracy fallback keeps layers in float, a few more at a
time, up to `fallback_limit` layers. The figures are then measured on the data that chose the
fallback: benchmarks measure on other inputs (bench/int8_efficientnet_lite0.py does)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import pipeline.quantization.accuracy as accuracy
from pipeline.artifact.manifest import Accuracy, DataInfo, Quantization
from pipeline.artifact.tuning_logs import (
    CALIBRATION,
    LoggedCalibration,
    LoggedQuantization,
    logged_quantization,
)
from pipeline.base.devices import DeviceConfig
from pipeline.base.errors import UserError
from pipeline.base.variant import Variant
from pipeline.compile.host import compile_for_host
from pipeline.frontend.importer import ImportedModel
from pipeline.frontend.models import LoadedModel
from pipeline.frontend.passes import fold_constants
from pipeline.quantization.calibration import calibrate
from pipeline.quantization.datasets import (
    CALIBRATION_SEED,
    Dataset,
    evaluation_sets,
    load_dataset,
)
from pipeline.quantization.observers import observer_for
from pipeline.quantization.plan import Int8Plan, LayerId, Method, plan_from_json, plan_to_json
from pipeline.quantization.policy import Int8Policy, policy_for
from pipeline.quantization.rewrite import apply_int8
from pipeline.quantization.sensitivity import INPUTS_PER_SET, Simulation, layer_sensitivity

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP_POINTS = 1.0


@dataclass(frozen=True)
class QuantizeOptions:
    """None for `keep_float` or `max_drop_points`: what the tuning logs were tuned with
    (`with_logged`), else none and DEFAULT_MAX_DROP_POINTS."""

    variant: Variant = Variant.FP32
    method: Method = "mse"
    percentile: float = 99.99
    calibration: str = "builtin"
    calibration_count: int = 256
    eval_data: str | None = None  # None: the calibration source (builtin: other crops)
    eval_count: int = 200  # per evaluation set
    keep_float: frozenset[str] | None = None
    fallback_limit: int = 8  # layers the accuracy fallback may keep in float (0: none)
    max_drop_points: float | None = None
    force: bool = False

    def __post_init__(self) -> None:
        observer_for(self.method, self.percentile)  # an unknown method is a UserError
        if not 50.0 < self.percentile <= 100.0:
            raise UserError(f"--percentile {self.percentile} must be in (50, 100].")
        if self.calibration_count < 1 or self.eval_count < 1 or self.fallback_limit < 0:
            raise UserError("--calibration-count and --eval-count must be >= 1, "
                            "--fallback-limit >= 0.")
        if self.max_drop_points is not None and self.max_drop_points < 0:
            raise UserError(f"--max-accuracy-drop {self.max_drop_points} must be >= 0.")

    def with_logged(self, logged: LoggedQuantization | None) -> QuantizeOptions:
        """These options with what was not given taken from the logs' record (`logged`), or
        the defaults."""
        if self.variant is not Variant.INT8 or logged is None:
            logged = LoggedQuantization((), DEFAULT_MAX_DROP_POINTS)
        return replace(self, keep_float=(frozenset(logged.float_layers)
                                         if self.keep_float is None else self.keep_float),
                       max_drop_points=(logged.max_drop_points if self.max_drop_points is None
                                        else self.max_drop_points))


@dataclass(frozen=True)
class Quantized:
    mod: object  # the Relax module to lower, tune and build
    variant: Variant
    quantization: Quantization | None  # None for fp32
    accuracy: Accuracy | None  # the worst evaluation set's
    # The quantized model compiled for this machine: the reference that board runs of the
    # artifact are checked against (the framework computes no int8). None for fp32.
    reference: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    plan: Int8Plan | None = None  # int8: the calibration, bundled with the artifact
    evaluations: tuple[Accuracy, ...] = ()  # every evaluation set's


def quantize(imported: ImportedModel, model: LoadedModel, device: DeviceConfig,
             options: QuantizeOptions, records: Path | None = None) -> Quantized:
    """`records`: the tuning logs the artifact will be built with; the quantized model is
    measured with their kernels where this CPU runs them (compile_for_host)."""
    options = options.with_logged(None)  # the job has filled in what the logs say
    variant = options.variant
    if variant is Variant.FP32:
        return Quantized(imported.mod, variant, None, None)
    _require_capability(device, variant)
    evaluation = _Evaluation.load(model, options)
    if variant is Variant.FP16:
        mod, info, plan = apply_fp16(imported.mod), Quantization("fp16", 0), None
        reports, run = evaluation.measure(mod, options, records)
    else:
        mod, info, plan, reports, run = _int8(imported, model, options, evaluation,
                                              policy_for(device.tvm_target()), records)
    worst = accuracy.worst(reports)
    sensitivity = info.sensitivity if info else {}
    accuracy.require(worst, variant, tuple(sorted(sensitivity, key=sensitivity.get)[:12]))
    if not accuracy.within(worst):
        log.warning(f"packaging with --force although the drop exceeds "
              f"{options.max_drop_points:g} points")
    return Quantized(mod, options.variant, info, worst, run, plan, reports)


@dataclass(frozen=True)
class _Evaluation:
    """The evaluation sets and the fp32 model's outputs on them."""

    sets: tuple[Dataset, ...]
    references: tuple[np.ndarray, ...]

    @classmethod
    def load(cls, model: LoadedModel, options: QuantizeOptions) -> _Evaluation:
        sets = evaluation_sets(options.eval_data or options.calibration, model.input_shape,
                               options.eval_count)
        return cls(sets, tuple(np.concatenate([model.reference_output(x[None])
                                               for x in data.inputs]) for data in sets))

    def measure(self, mod, options: QuantizeOptions, records: Path | None = None):
        """The quantized model, compiled for this machine (with `records` where they run
        here), against fp32 on every set."""
        log.info(f"measuring {options.variant} against fp32 on {len(self.sets)} sets of inputs "
                 f"({', '.join(f'{d.spec}: {len(d)}' for d in self.sets)})")
        run = compile_for_host(mod, records)
        reports = []
        for data, reference in zip(self.sets, self.references, strict=True):
            outputs = np.concatenate([y for y, in run.map(x[None] for x in data.inputs)])
            report = accuracy.compare(reference, outputs, data.labels, _info(data),
                                      options.max_drop_points, forced=options.force)
            log.info(f"  {accuracy.describe(report)}: {report.drop_points:.2f} points lost "
                     f"(allowed: {report.max_drop_points:g})")
            reports.append(report)
        return tuple(reports), lambda x: run(x)[0]


def requantize(mod, info: Quantization, plan: Int8Plan | None, target: dict):
    """The quantized module of an existing artifact, from its manifest and calibration record
    (no calibration, no accuracy run) and the target it was built for: what a rebuild
    compiles."""
    import tvm

    if info.mode == "fp16":
        return apply_fp16(mod)
    if plan is None:
        raise UserError("The int8 artifact has no calibration record; it cannot be rebuilt.")
    return apply_int8(mod, plan, policy_for(tvm.target.Target(dict(target))),
                      frozenset(info.float_layers))


def _require_capability(device: DeviceConfig, variant: Variant) -> None:
    mode = variant.value
    if mode not in device.capabilities:
        have = ", ".join(sorted(device.capabilities)) or "none"
        hint = ("no fp16 arithmetic" if variant is Variant.FP16 else "no int8 support")
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
        fold_constants(),
    ])(mod)


def _int8(imported: ImportedModel, model: LoadedModel, options: QuantizeOptions,
          evaluation: _Evaluation, policy: Int8Policy, records: Path | None):
    """Calibrate, measure each layer's sensitivity, rewrite, measure; while the worst set's drop
    is over the threshold, keep more layers in float (the accuracy fallback: 1, 2, 4, ... up
    to `fallback_limit`, the most sensitive first)."""
    calibration = load_dataset(options.calibration, model.input_shape, options.calibration_count,
                               CALIBRATION_SEED)
    recorded = _recorded_calibration(records, model, options, calibration)
    if recorded is not None:
        plan = plan_from_json(recorded.plan, str(records / CALIBRATION))
    else:
        log.info(f"calibrating int8 ({options.method}) on {len(calibration)} inputs from "
                 f"{calibration.spec}")
        plan = calibrate(imported.mod, calibration.inputs,
                         observer_for(options.method, options.percentile))
    keep = frozenset(options.keep_float)
    if recorded is not None and recorded.eval_data == _eval_spec(options):
        sensitivity = recorded.sensitivity
    else:
        log.info(f"measuring the sensitivity of {len(plan.layers)} layers on "
                 f"{len(evaluation.sets)} x {INPUTS_PER_SET} inputs")
        sensitivity = layer_sensitivity(Simulation(
            imported.mod, plan, [data.inputs[:INPUTS_PER_SET] for data in evaluation.sets],
            [reference[:INPUTS_PER_SET] for reference in evaluation.references]))
    ranked = sorted((name for name in sensitivity if name not in keep), key=sensitivity.get)
    limit = min(options.fallback_limit, len(ranked))
    fallback: list[str] = []
    while True:
        mod = apply_int8(imported.mod, plan, policy, keep | frozenset(fallback))
        reports, run = evaluation.measure(mod, options, records)
        if accuracy.within(accuracy.worst(reports)) or len(fallback) >= limit:
            break
        fallback = ranked[:min(2 * len(fallback) or 1, limit)]
        log.info(f"  accuracy fallback: keeping {', '.join(fallback)} in float")
    floats = tuple(sorted(keep | set(fallback), key=lambda name: LayerId.parse(name).order))
    info = Quantization("int8", len(plan.layers) - len(floats), floats, tuple(fallback),
                        options.method,
                        options.percentile if options.method == "percentile" else None,
                        _info(calibration), sensitivity)
    return mod, info, plan, reports, run


def _recorded_calibration(records: Path | None, model: LoadedModel, options: QuantizeOptions,
                          data: Dataset) -> LoggedCalibration | None:
    """The calibration the int8 logs in `records` were tuned with, if it is of this model on
    these very samples with this method (else None: calibrate)."""
    logged = logged_quantization(records) if records is not None else None
    recorded = logged.calibration if logged is not None else None
    if recorded is None:
        return None
    percentile = options.percentile if options.method == "percentile" else None
    if (recorded.model_sha256, recorded.method, recorded.percentile, recorded.data.sha256) != (
            model.sha256, options.method, percentile, data.sha256):
        log.info(f"the calibration recorded in {records / CALIBRATION} is of another model, "
                 f"data or method: calibrating anew")
        return None
    log.info(f"int8 calibration as recorded in {records / CALIBRATION} (this model, the same "
             f"{len(data)} inputs of {data.spec}, {options.method}): not calibrated again "
             f"(delete that file to calibrate anew)")
    return recorded


def calibration_record(model: LoadedModel, quantized: Quantized,
                       options: QuantizeOptions) -> LoggedCalibration | None:
    """What the int8 logs record of the calibration they are tuned with (None: not int8)."""
    info = quantized.quantization
    if quantized.plan is None or info is None or info.calibration is None:
        return None
    return LoggedCalibration(model.sha256, info.method, info.percentile, info.calibration,
                             _eval_spec(options), dict(info.sensitivity),
                             plan_to_json(quantized.plan))


def _eval_spec(options: QuantizeOptions) -> str:
    return options.eval_data or options.calibration


def _info(data: Dataset) -> DataInfo:
    return DataInfo(data.spec, len(data), data.sha256)


