"""The nightly job: rebuild every deployable artifact of the matrix from the committed logs.

For each entry (models x device classes x variants): build with no tuning, verify on a board
of the class when the farm has one (else say why not), compare the library byte for byte with
the released artifact (and name the input that differs), and compare latency and accuracy with
the previous night. One failing entry does not stop the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.manifest import LIB_NAME, LOGS_DIRNAME, MANIFEST_NAME, read_manifest
from pipeline.artifact.store import unpack
from pipeline.artifact.tuning_logs import measured_in_order
from pipeline.base.devices import load_device
from pipeline.base.errors import UserError
from pipeline.base.files import atomic_write, read_yaml
from pipeline.base.paths import BUILD_ROOT, TUNING_LOGS
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.compile import cost_model
from pipeline.farm.local import farm_for, runs_here
from pipeline.farm.tracker import TrackerAddress, registered_boards
from pipeline.frontend.models import load_model
from pipeline.job.build_job import JobSpec, logs_for, run_job
from pipeline.job.provenance import input_differences
from pipeline.job.report import (
    REPORT_SCHEMA,
    EntryResult,
    NightlyReport,
    TuningMinutes,
    write_report,
)
from pipeline.quantization.stage import QuantizeOptions

log = logging.getLogger(__name__)

NIGHTLY_ROOT = BUILD_ROOT / "nightly"


@dataclass(frozen=True)
class Matrix:
    entries: tuple[ArtifactKey, ...]  # int8/fp16 are quantized with the default options
    regression_threshold: float = 0.10  # allowed relative latency increase over last night
    tuning_minutes: tuple[TuningMinutes, ...] = ()  # bench/tuning_curve.py runs to plot


def load_matrix(path: Path) -> Matrix:
    where = str(path)
    raw = read_yaml(path, "nightly matrix")
    if not isinstance(raw, dict) or set(raw) - {"entries", "regression_threshold",
                                                "tuning_minutes"}:
        raise UserError(f"{where}: expected keys 'entries' and optionally "
                        f"'regression_threshold' and 'tuning_minutes'.")
    entries = []
    for i, item in enumerate(raw.get("entries") or []):
        if not isinstance(item, dict) or set(item) - {"model", "device", "variant"} or \
                not {"model", "device"} <= set(item):
            raise UserError(f"{where}: entries[{i}] must have model, device and optionally "
                            f"variant, nothing else.")
        variant = Variant.parse(str(item.get("variant", "fp32")), f"{where}: entries[{i}].variant")
        entries.append(ArtifactKey(str(item["device"]), str(item["model"]), variant))
    if not entries:
        raise UserError(f"{where}: 'entries' is empty.")
    threshold = raw.get("regression_threshold", 0.10)
    if not isinstance(threshold, (int, float)) or threshold < 0:
        raise UserError(f"{where}: regression_threshold must be a number >= 0, e.g. 0.1.")
    return Matrix(tuple(entries), float(threshold),
                  tuple(_tuning_minutes(path.parent / str(name), where)
                        for name in raw.get("tuning_minutes") or ()))


def _tuning_minutes(path: Path, where: str) -> TuningMinutes:
    try:
        return TuningMinutes.from_dict(json.loads(path.read_text()))
    except OSError as err:
        raise UserError(f"{where}: tuning_minutes names {path}, which cannot be read ({err}); "
                        f"give paths relative to the matrix file, written by "
                        f"`python3 bench/tuning_curve.py --json FILE`.") from err
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{where}: tuning_minutes file {path} is not a file of "
                        f"bench/tuning_curve.py --json ({type(err).__name__}: {err}).") from err


def run_nightly(matrix: Matrix, tracker: TrackerAddress | None, releases: Path, history: Path,
                out_dir: Path, log_root: Path = TUNING_LOGS) -> NightlyReport:
    earlier = _history_reports(history)
    previous = earlier[-1] if earlier else None
    _retrain_cost_models(matrix, log_root)
    results = []
    for key in matrix.entries:
        log.info(f"== {key.id}")
        result = EntryResult(key.id)
        try:
            _run_entry(key, result, tracker, releases, out_dir, log_root)
            _compare_with_previous(result, previous, matrix.regression_threshold)
        except Exception as err:  # noqa: BLE001 - one failing entry must not stop the others
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            log.info(f"   error: {result.error}\n{traceback.format_exc()}")
        if result.problems and result.status == "ok":
            result.status = "problem"
        results.append(result)
        log.info(f"   {result.status}" + "".join(f"; {p}" for p in result.problems))
    failed = any(r.status != "ok" for r in results)
    report = NightlyReport(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           matrix.regression_threshold, str(tracker) if tracker else None,
                           tuple(results), 1 if failed else 0, matrix.tuning_minutes)
    write_report(report, earlier, out_dir)
    stamp = report.started.replace(":", "").replace("+0000", "Z")
    stamp = f"{stamp}-{len(earlier):04d}"  # two runs in one second
    history.mkdir(parents=True, exist_ok=True)
    atomic_write(history / f"{stamp}.json", report.to_json())
    return report


def _retrain_cost_models(matrix: Matrix, log_root: Path) -> None:
    """Retrain the cost model of each class of the matrix whose logs changed since it was
    trained (or that has none), so that tuning a new model starts from every committed record."""
    class_dirs = sorted({logs_for(load_device(key.device), key, log_root).folder.parent
                         for key in matrix.entries if _is_known_device(key.device)})
    for class_dir in class_dirs:
        model = cost_model.shipped(class_dir)
        if model is not None and cost_model.is_current(model, class_dir):
            log.info(f"cost model of {class_dir.name}: current ({model.records} records)")
            continue
        try:
            model = cost_model.train(class_dir)
        except Exception as err:  # noqa: BLE001 - too few records, say: the builds still run
            log.info(f"cost model of {class_dir.name}: not trained: {err}")
            continue
        log.info(f"cost model of {class_dir.name}: retrained, {model}")


def _is_known_device(name: str) -> bool:
    try:
        load_device(name)
    except UserError:
        return False
    return True


def _run_entry(key: ArtifactKey, result: EntryResult, tracker: TrackerAddress | None,
               releases: Path, out_dir: Path, log_root: Path) -> None:
    model = load_model(key.model)
    device = logs_for(load_device(key.device), key, log_root).device
    verify, note = True, ""
    if tracker is not None and registered_boards(tracker, device.rpc_key) == 0:
        verify = False
        note = f"skipped: no '{device.rpc_key}' board registered at the tracker {tracker}"
    elif tracker is None and not runs_here(device):
        verify = False
        note = (f"skipped: this machine's CPU cannot run {device.target['mcpu']} code and no "
                f"--tracker was given")
    dest = key.under(out_dir / "artifacts")
    with farm_for(device, tracker) if verify else contextlib.nullcontext(tracker) as address:
        job = run_job(JobSpec(device, model, 0, address, dest, log_root,
                              QuantizeOptions(variant=key.variant), verify))
    manifest = job.manifest
    result.lib_sha256 = manifest.files[LIB_NAME]
    result.trials = manifest.tuning.trials
    result.tuning_curve_ms = tuning_curve_ms(dest / LOGS_DIRNAME)
    check = manifest.verification
    result.verify_note = note
    if check is not None:
        result.board, result.emulated = check.board, check.emulated
        result.max_abs_error = check.max_abs_error
        result.top1_matches = check.top1_matches_framework
        result.latency_ms = check.latency_ms_median
        result.timing = check.timing or ("measured" if check.latency_ms_median else None)
        if check.timing and check.timing != "measured":
            result.verify_note = f"outputs checked; latency {check.timing}"
        elif check.emulated:
            result.verify_note = "emulated board: outputs checked, not benchmarked"
        else:
            result.verify_note = "outputs checked and benchmarked"
    _compare_with_release(result, key, releases, device, model, manifest)


def _compare_with_release(result: EntryResult, key: ArtifactKey, releases: Path, device, model,
                          manifest) -> None:
    folder = key.under(releases)
    tarball = folder.with_name(folder.name + ".tar.gz")
    if not folder.exists() and tarball.exists():
        folder = _unpacked_release(tarball)
    if not (folder / MANIFEST_NAME).exists():
        result.release_note = f"no released artifact at {folder}: nothing to compare with"
        return
    released = read_manifest(folder)
    result.reproducible = released.files.get(LIB_NAME) == result.lib_sha256
    if result.reproducible:
        result.release_note = f"byte-identical to {folder}"
        return
    causes = input_differences(released, device, model)
    if released.tuning.log_sha256 != manifest.tuning.log_sha256:
        causes.append("tuning logs differ from the released artifact's")
    result.release_note = f"differs from {folder}: " + (
        "; ".join(causes) if causes else "no recorded input differs (a non-deterministic build?)")
    result.problems.append("reproducibility break: " + result.release_note)


def _unpacked_release(tarball: Path) -> Path:
    """Unpack a released tarball (safely, hashes checked) next to it, once."""
    dest = tarball.with_name(tarball.name.removesuffix(".tar.gz") + ".unpacked")
    if not dest.exists():
        unpack(tarball, dest)
    return dest


def _compare_with_previous(result: EntryResult, previous: NightlyReport | None,
                           threshold: float) -> None:
    before = previous.entry(result.id) if previous is not None else None
    if before is None:
        return
    if (before.timing or "measured") != (result.timing or "measured"):
        # A modeled figure (or another model version) is never compared with a measured one.
        return
    result.previous_latency_ms = before.latency_ms
    if result.latency_ms is not None and result.previous_latency_ms:
        ratio = result.latency_ms / result.previous_latency_ms
        if ratio > 1 + threshold:
            result.problems.append(
                f"latency regression: {result.latency_ms:.3f} ms vs "
                f"{result.previous_latency_ms:.3f} ms last night (+{(ratio - 1) * 100:.0f}%, "
                f"threshold +{threshold * 100:.0f}%)")
    if before.top1_matches and result.top1_matches is False:
        result.problems.append("accuracy regression: top-1 no longer matches the framework")


def tuning_curve_ms(log_folder: Path) -> list[float]:
    """After each record: the sum over kernels of the best time measured so far (ms).
    Unweighted (a kernel called twice counts once): it shows progress, not model latency."""
    best: dict[int, float] = {}
    curve = []
    for workload, seconds in measured_in_order(log_folder):
        if seconds is not None:
            best[workload] = min(best.get(workload, seconds), seconds)
        if best:
            curve.append(sum(best.values()) * 1e3)
    return curve


def _history_reports(history: Path) -> list[NightlyReport]:
    reports = []
    for path in sorted(history.glob("*.json")) if history.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            raw = json.loads(path.read_text())
            if raw.get("schema") == REPORT_SCHEMA:
                reports.append(NightlyReport.from_dict(raw))
    return reports
