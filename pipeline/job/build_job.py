"""The main job, shared by `pipeline.tune`, `pipeline.build` and the nightly rebuilds: a
straight sequence of typed stages.

    import -> quantize -> lower -> tune -> build -> verify -> package

Why this order: quantization and its accuracy gate come before tuning, so a model that loses
too much accuracy costs no tuning time; the model is lowered once, and tuning and building
see the very same kernels (tuning records are keyed by their exact TIR); verification comes
before packaging, so no artifact exists whose outputs were not checked on a board of its class.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifact.manifest import (
    CALIBRATION_NAME,
    DeviceInfo,
    Manifest,
    ModelInfo,
    TensorSpec,
    TuningInfo,
    Verification,
)
from pipeline.artifact.store import check_destination, write_artifact
from pipeline.artifact.tuning_logs import (
    QUANTIZATION,
    LoggedQuantization,
    buildable_device,
    count_records,
    exclusive,
    file_hashes,
    log_dir,
    logged_quantization,
    logged_target,
    record_quantization,
    snapshot,
)
from pipeline.base.devices import DeviceConfig, runs_target, x86_classes_fastest_first
from pipeline.base.files import require_writable_folder, sha256_file
from pipeline.base.paths import ARTIFACTS, TUNING_LOGS
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.compile.build import BuiltLibrary, build_library
from pipeline.compile.cost_model import TrainedCostModel, is_current, shipped
from pipeline.compile.lowering import lower
from pipeline.compile.transfer import transfer, transfer_sources
from pipeline.compile.tuning import tune
from pipeline.farm.local import farm_for
from pipeline.farm.tracker import TrackerAddress
from pipeline.frontend.importer import ImportedModel, import_model
from pipeline.frontend.models import LoadedModel
from pipeline.job.provenance import toolchain_versions
from pipeline.quantization.plan import LayerId, plan_to_json
from pipeline.quantization.stage import (
    Quantized,
    QuantizeOptions,
    calibration_record,
    quantize,
)
from pipeline.verify.board import verify_on_board

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    device: DeviceConfig
    model: LoadedModel
    # Total tuning budget, logs included; 0 builds from the logs as they are; None: the default
    # budget of the class whose logs are used.
    trials: int | None
    tracker: TrackerAddress | None = None  # None: an embedded farm for the job's duration
    out_dir: Path | None = None  # None: artifacts/<device>/<model>-<variant>
    log_root: Path = TUNING_LOGS
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    verify: bool = True  # False: packaged without verification (no board of the class)
    retune: bool = False  # host: tune this exact CPU into its own logs, never borrow a class's
    # Kernels with no records borrow schedules of their kind from the class's other logs
    # (pipeline.compile.transfer), measured on the job's boards.
    transfer: bool = True
    # Tuning ranks candidates with the cost model trained on the class's committed records
    # (pipeline.compile.cost_model) where one is shipped; False: a fresh one, as MetaSchedule's.
    trained_cost_model: bool = True

    @property
    def key(self) -> ArtifactKey:
        return ArtifactKey(self.device.name, self.model.name, self.options.variant)


@dataclass(frozen=True)
class JobResult:
    artifact: Path
    manifest: Manifest


def run_job(spec: JobSpec) -> JobResult | None:
    """Returns None when tuning was interrupted (the logs keep every finished trial)."""
    dest = spec.out_dir or spec.key.under(ARTIFACTS)
    check_destination(dest, spec.key)  # before any work: nothing of the user's is replaced
    source = logs_for(spec.device, spec.key, spec.log_root, retune=spec.retune)
    device, folder = source.device, source.folder
    trials = source.budget if spec.trials is None else spec.trials
    # Logs are only read when nothing is tuned: committed logs may sit in a read-only install.
    require_writable_folder(folder, "tuning log", writable=trials > 0)
    model = spec.model
    options = _options_for(spec.options, folder)
    log.info("importing %s (%s, input %s)", model.spec, model.source, list(model.input_shape))
    imported = import_model(model)
    quantized = quantize(imported, model, device, options, records=folder)
    lowered = lower(quantized.mod, device.tvm_target())
    needs_boards = trials > 0 or spec.verify
    sources = (transfer_sources(device, folder, spec.log_root, also=_also_borrowed(device))
               if spec.transfer and needs_boards else [])
    with farm_for(device, spec.tracker) if needs_boards else contextlib.nullcontext() as address:
        if trials > 0:
            with exclusive(folder):  # into the logs: the search starts from them
                _record_quantization(folder, model, quantized, options)
                transfer(lowered, device, folder, sources, spec.log_root, address)
            cost_model = (_cost_model_for(device, folder, spec.log_root)
                          if spec.trained_cost_model else None)
            if tune(lowered, device, folder, trials, address, seed=source.seed,
                    cost_model=cost_model).interrupted:
                return None
        log.info("building for %s with the logs in %s", device.name, folder)
        with tempfile.TemporaryDirectory(prefix="pipeline-build-") as scratch:
            # Build from and bundle one snapshot: a tuner may still be appending to `folder`.
            used_logs = Path(scratch) / "logs"
            for line in snapshot(folder, used_logs).dropped:
                log.warning("skipped a corrupt tuning record: %s",
                            line.replace(str(used_logs), str(folder)))
            if trials == 0:  # into the bundled copy: a build leaves the logs as they are
                transfer(lowered, device, used_logs, sources, spec.log_root, address)
            built = build_library(lowered, device, used_logs, Path(scratch) / "lib.so")
            borrowed = sum(1 for k in built.kernels.values() if k.startswith("transferred"))
            log.info("  %d/%d kernels from the tuning logs%s", built.tuned_kernels,
                     built.total_kernels, f" ({borrowed} transferred)" if borrowed else "")
            checked = (verify_on_board(built.path, model, quantized, device, address)
                       if spec.verify else None)
            manifest = _manifest(device, model, imported, quantized, built, used_logs, checked)
            extras = ({CALIBRATION_NAME: plan_to_json(quantized.plan)}
                      if quantized.plan is not None else {})
            return JobResult(dest, write_artifact(dest, built.path, used_logs, manifest, extras))


def _options_for(options: QuantizeOptions, folder: Path) -> QuantizeOptions:
    """`options` with the float layers and accuracy gate not given taken from what the int8
    logs in `folder` were tuned with: other float layers would mean kernels with no records."""
    logged = logged_quantization(folder) if options.variant is Variant.INT8 else None
    resolved = options.with_logged(logged)
    if logged is not None and resolved != options:
        log.info("int8 as the logs in %s were tuned (their %s): %s kept in float, accuracy gate "
                 "%g points; --keep-float and --max-accuracy-drop choose otherwise", folder,
                 QUANTIZATION, ", ".join(sorted(resolved.keep_float, key=_layer_order))
                 or "no layer",
                 resolved.max_drop_points)
    return resolved


def _layer_order(name: str) -> tuple:
    return LayerId.parse(name).order


def _record_quantization(folder: Path, model: LoadedModel, quantized: Quantized,
                         options: QuantizeOptions) -> None:
    """Say in the logs which int8 configuration (float layers, calibration) their records are
    tuned for."""
    if quantized.variant is not Variant.INT8 or quantized.quantization is None:
        return
    tuned = LoggedQuantization(quantized.quantization.float_layers, options.max_drop_points,
                               calibration_record(model, quantized, options))
    before = logged_quantization(folder)
    if before is not None and before.float_layers != tuned.float_layers:
        log.info("the logs in %s were tuned with %s in float; from now on they are tuned, and "
                 "built by default, with %s", folder, ", ".join(before.float_layers) or "no layer",
                 ", ".join(tuned.float_layers) or "no layer")
    if before != tuned:
        record_quantization(folder, tuned)


@dataclass(frozen=True)
class LogSource:
    device: DeviceConfig  # as these logs build it
    folder: Path
    borrowed_from: DeviceConfig | None = None  # the class whose logs a detected host uses
    # A class's logs that tuning starts its search from (host tuning its own logs: --retune)
    seed: Path | None = None

    @property
    def budget(self) -> int:
        """The default tuning budget: that of the class whose logs these are."""
        return (self.borrowed_from or self.device).tuning.trials


def logs_for(device: DeviceConfig, key: ArtifactKey, log_root: Path,
             retune: bool = False) -> LogSource:
    """The logs a job tunes and builds `key` with. A detected `host` with no records of its own
    for the model borrows those of the fastest shipped x86 class whose instructions this CPU
    has (an AVX-512 Xeon or EPYC takes x86-avx512's, an AVX2-only CPU x86-nuc's), saying so,
    and any tuning then adds to them with this machine as a board of that class. With none,
    or with `retune`, it uses its own folder, for this exact CPU."""
    own = log_dir(key, log_root)
    if not device.detected:
        return LogSource(device_for_logs(device, own), own)
    borrowable = _borrowable(key, log_root)
    if retune or count_records(own) > 0:
        return LogSource(device_for_logs(device, own), own,
                         seed=borrowable[1] if borrowable else None)
    if borrowable is not None:
        candidate, folder, target = borrowable
        log.info("%s: no tuning logs of its own for %s; building with the %s class's logs in "
                 "%s (tuned for %s, which this CPU runs)", device.name, key.id, candidate.name,
                 folder, target["mcpu"])
        return LogSource(device.with_target(target), folder, candidate)
    log.info("%s: no tuning logs for %s of its own or of any x86 class this CPU runs",
             device.name, key.id)
    return LogSource(device, own)


def _cost_model_for(device: DeviceConfig, folder: Path,
                    log_root: Path) -> TrainedCostModel | None:
    """The cost model shipped with the class whose logs these are, else with the first class
    the kernels may transfer from (a detected host's x86 classes)."""
    for class_dir in (folder.parent, *(log_root / name for name in _also_borrowed(device))):
        model = shipped(class_dir)
        if model is not None:
            if not is_current(model, class_dir):
                log.info("the cost model in %s was trained before its logs last changed; it "
                         "still ranks candidates (python -m pipeline.nightly, or "
                         "pipeline.compile.cost_model.train, retrains it)", model.path.parent)
            return model
    return None


def _also_borrowed(device: DeviceConfig) -> tuple[str, ...]:
    """The classes besides its own whose logs a device's kernels may transfer from: for a
    detected host, every x86 class whose code this CPU runs."""
    if not device.detected:
        return ()
    return tuple(c.name for c in x86_classes_fastest_first() if runs_target(c.target))


def _borrowable(key: ArtifactKey, log_root: Path):
    """(class, its logs folder, their target) of the fastest x86 class with logs for `key`
    whose code this CPU runs, or None."""
    for candidate in x86_classes_fastest_first():
        folder = log_dir(ArtifactKey(candidate.name, key.model, key.variant), log_root)
        target = logged_target(folder) if count_records(folder) else None
        if target is not None and runs_target(target):
            return candidate, folder, target
    return None


def device_for_logs(device: DeviceConfig, folder: Path) -> DeviceConfig:
    """`device` as the logs in `folder` build it (see `buildable_device`), saying so when that
    is another CPU model than this machine's."""
    buildable = buildable_device(device, folder)
    if buildable is not device:
        log.info("%s: this CPU (%s) runs every instruction of %s, the CPU model the logs in %s "
                 "were tuned for: building for %s", device.name, device.target["mcpu"],
                 buildable.target["mcpu"], folder, buildable.target["mcpu"])
    return buildable


def _manifest(device: DeviceConfig, model: LoadedModel, imported: ImportedModel,
              quantized: Quantized, built: BuiltLibrary, used_logs: Path,
              checked: Verification | None) -> Manifest:
    return Manifest(
        model=ModelInfo(model.name, model.source, model.spec, model.sha256,
                        TensorSpec(model.input_name, model.input_shape),
                        TensorSpec("output", imported.output_shape)),
        device=DeviceInfo(device.name, device.target, device.rpc_key, sha256_file(device.source)),
        variant=quantized.variant, toolchain=toolchain_versions(device),
        tuning=TuningInfo(count_records(used_logs), built.tuned_kernels, built.total_kernels,
                          file_hashes(used_logs), built.kernels),
        files={}, verification=checked, quantization=quantized.quantization,
        accuracy=quantized.accuracy, evaluations=quantized.evaluations)
