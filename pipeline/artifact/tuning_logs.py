"""Tuning logs: MetaSchedule's JSON database (two append-only JSON-lines files) in one folder.

A folder per device class and model variant: tuning_logs/<device>/<model>-<variant>/. Records
are appended as they are measured, so a crash loses at most the line being written; `repair`
moves such a truncated or corrupt line aside before MetaSchedule (which would refuse the whole
file) reads it. Every record names the target it was tuned for: `check_target` refuses logs of
another target, which the database itself would happily apply."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipeline.artifact.log_repair import RECORDS, WORKLOADS, RepairReport, repair
from pipeline.artifact.manifest import CALIBRATION_NAME, DataInfo, from_json
from pipeline.base.devices import TARGET_KEYS, DeviceConfig, runs_target
from pipeline.base.errors import UserError
from pipeline.base.files import atomic_write, sha256_file
from pipeline.base.paths import TUNING_LOGS
from pipeline.base.variant import ArtifactKey

# Kernels whose records transfer tuning borrowed from other logs (pipeline.compile.transfer)
# and no search has improved on since: task name -> where they came from.
TRANSFERRED = "transferred.json"
# What a quantized model's logs were tuned for: the layers kept in float decide which kernels
# exist, so a build with other float layers would find no records for some of them.
QUANTIZATION = "quantization.json"
# ... and the int8 plan they were tuned with (as an artifact bundles it), which a build of the
# same model on the same data applies instead of calibrating again.
CALIBRATION = CALIBRATION_NAME
LOG_FILES = (WORKLOADS, RECORDS, TRANSFERRED, QUANTIZATION, CALIBRATION)
_OPTIONAL = {TRANSFERRED, QUANTIZATION, CALIBRATION}
LOCK_NAME = ".lock"


def log_dir(key: ArtifactKey, root: Path = TUNING_LOGS) -> Path:
    return key.under(root)


FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed candidate as 1e10 s


def seeded_database(own, seed_folder: Path):
    """`own` (a JSON database: every commit goes there) whose top-k answers also hold the best
    records of the same workloads from the logs in `seed_folder`, read only: MetaSchedule's
    search then starts from another class's best schedules (a warm start) while the logs it
    writes, counts and builds from stay its own."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    seed = ms.database.JSONDatabase(path_workload=str(seed_folder / WORKLOADS),
                                    path_tuning_record=str(seed_folder / RECORDS),
                                    allow_missing=False)
    by_workload: dict[int, list] = {}
    for record in seed.get_all_tuning_records():
        if ran(record):
            by_workload.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(record)
    for records in by_workload.values():
        records.sort(key=lambda r: sum(float(s) for s in r.run_secs) / len(r.run_secs))

    @tvm.ir.utils.derived_object
    class SeededDatabase(ms.database.PyDatabase):
        def has_workload(self, mod):
            return own.has_workload(mod)

        def commit_workload(self, mod):
            return own.commit_workload(mod)

        def commit_tuning_record(self, record):
            own.commit_tuning_record(record)

        def get_top_k(self, workload, top_k):
            records = list(own.get_top_k(workload, top_k))
            seeds = by_workload.get(tvm_ffi.structural_hash(workload.mod), [])
            return records + seeds[:max(top_k - len(records), 0)]

        def get_all_tuning_records(self):
            return own.get_all_tuning_records()

        def query_tuning_record(self, mod, target, workload_name):
            return own.query_tuning_record(mod, target, workload_name)

        def query_schedule(self, mod, target, workload_name):
            return own.query_schedule(mod, target, workload_name)

        def query_ir_module(self, mod, target, workload_name):
            return own.query_ir_module(mod, target, workload_name)

        def __len__(self):
            return len(own)

    return SeededDatabase(), sum(len(r) for r in by_workload.values())


def has_valid_records(database, workload) -> bool:
    """Whether `database` holds a record of `workload` (a one-function IRModule) that ran."""
    if not database.has_workload(workload):
        return False
    return any(ran(r) for r in database.get_top_k(database.commit_workload(workload), 1))


def ran(record) -> bool:
    """Whether a tuning record is of a candidate that ran (a failed one has 1e10 s)."""
    return bool(record.run_secs) and all(float(s) < FAILED_RUN_SECS for s in record.run_secs)


def open_database(folder: Path):
    """The folder's records as MetaSchedule's JSON database, what tuning appends to and a build
    applies (its files are created if missing; `repair` first if a crash may have cut a line
    short). Loading parses every workload's TIR and replays every record's trace on it, so it
    needs the tensor intrinsics the records name registered (pipeline.compile.extensions); a
    build needs only `best_records`."""
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS),
                                        path_tuning_record=str(folder / RECORDS))
    except RuntimeError as err:  # TVM's own check of a record against the workloads
        raise UserError(f"The tuning logs in {folder} cannot be loaded by MetaSchedule "
                        f"({str(err).splitlines()[-1][:300]}). Move that folder aside and tune "
                        f"again, or restore it from version control.") from None


def best_records(folder: Path, top_k: int = 1):
    """The folder's records as a read-only MetaSchedule database holding only the `top_k` best
    valid records of each workload: what a build applies and `has_valid_records` asks, answered
    exactly as `open_database` would. Loading a whole database replays every record's trace on
    its workload (~4 ms a record, 8 s for one model's 2000); this loads a few dozen."""
    from tvm.s_tir import meta_schedule as ms

    kept: dict[int, list[tuple[float, int, str]]] = {}
    path = folder / RECORDS
    for order, line in enumerate(path.read_text().splitlines() if path.exists() else ()):
        if not line.strip():
            continue
        workload, (trace, run_secs, *_) = json.loads(line)
        ranked = kept.setdefault(workload, [])
        if _valid(trace, run_secs):
            # MetaSchedule ranks by mean run time, the earlier of equals first.
            ranked.append((sum(run_secs) / len(run_secs), order, line))
    with tempfile.TemporaryDirectory(prefix="best-records-") as scratch:
        pruned = Path(scratch)
        shutil.copyfile(folder / WORKLOADS, pruned / WORKLOADS)
        lines = sorted((r for ranked in kept.values() for r in sorted(ranked)[:top_k]),
                       key=lambda r: r[1])
        (pruned / RECORDS).write_text("".join(line + "\n" for *_, line in lines))
        # Commits would go to the deleted scratch folder and fail: this view is read only.
        return ms.database.JSONDatabase(path_workload=str(pruned / WORKLOADS),
                                        path_tuning_record=str(pruned / RECORDS),
                                        allow_missing=False)


def _valid(trace, run_secs) -> bool:
    """MetaSchedule's TuningRecord.IsValid on the record's JSON: a trace with an instruction
    before its post-processing, and a run time other than the 1e10 s stub of a failed run."""
    instructions = trace[0]
    return (bool(instructions) and instructions[0][0] != "EnterPostproc"
            and any(s is not None and s != 1e10 for s in run_secs or ()))


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the folder's tuning lock for the block: one tuner appends to a folder at a time (two
    would tune the same tasks and duplicate workloads). Released when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{holder} is tuning into {folder}. Wait for it to finish (its "
                            f"records count for this run too), or tune into another --logs "
                            f"folder.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pipeline.tune (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshot(folder: Path, dest: Path) -> RepairReport:
    """Copy the logs as they are now (a tuner may still be appending) and set aside any line
    cut short, so that what is built and what is bundled are the very same records."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        source = folder / name
        if source.exists() or name not in _OPTIONAL:
            (dest / name).write_bytes(source.read_bytes() if source.exists() else b"")
    return repair(dest)


def transferred(folder: Path) -> dict[str, dict]:
    """Task name -> where the schedule it is built with was transferred from ({}: none)."""
    path = folder / TRANSFERRED
    return json.loads(path.read_text()) if path.exists() else {}


def record_transferred(folder: Path, kernels: dict[str, dict]) -> None:
    _write_transferred(folder, transferred(folder) | kernels)


def forget_transferred(folder: Path, tasks: set[str]) -> None:
    """Tuning searched these kernels: their schedules are no longer only transferred ones."""
    known = transferred(folder)
    if known.keys() & tasks:
        _write_transferred(folder, {k: v for k, v in known.items() if k not in tasks})


def _write_transferred(folder: Path, kernels: dict[str, dict]) -> None:
    atomic_write(folder / TRANSFERRED, json.dumps(kernels, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class LoggedCalibration:
    """Where the plan in CALIBRATION came from: a build that would calibrate the same model on
    the same data with the same method applies it instead (the same library on every CPU, and
    no calibration run), with the layer sensitivity measured then where the evaluation data
    is the same too."""

    model_sha256: str
    method: str
    percentile: float | None
    data: DataInfo
    eval_data: str  # the evaluation sets the sensitivity was measured on (their spec)
    sensitivity: dict[str, float]
    plan: str = field(default="", compare=False, repr=False)  # CALIBRATION's text


@dataclass(frozen=True)
class LoggedQuantization:
    """The int8 configuration a folder's records were tuned with, and the accuracy gate it
    passed: what a build with these logs uses unless told otherwise."""

    float_layers: tuple[str, ...]
    max_drop_points: float
    calibration: LoggedCalibration | None = None


def logged_quantization(folder: Path) -> LoggedQuantization | None:
    path = folder / QUANTIZATION
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        found = LoggedQuantization(tuple(str(n) for n in data["float_layers"]),
                                   float(data["max_drop_points"]))
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path} is not a quantization record ({err!r}): it should hold "
                        f'{{"float_layers": [...], "max_drop_points": N}}. Restore it from '
                        f"version control, or delete it and pass --keep-float and "
                        f"--max-accuracy-drop yourself.") from None
    if found.max_drop_points < 0:
        raise UserError(f"{path}: max_drop_points {found.max_drop_points:g} must be >= 0.")
    plan = folder / CALIBRATION
    if data.get("calibration") is not None and plan.exists():
        calibration = from_json(LoggedCalibration, data["calibration"], str(path))
        found = replace(found, calibration=replace(calibration, plan=plan.read_text()))
    return found


def record_quantization(folder: Path, quantization: LoggedQuantization) -> None:
    calibration = quantization.calibration
    if calibration is not None:
        atomic_write(folder / CALIBRATION, calibration.plan)
    atomic_write(folder / QUANTIZATION, json.dumps(
        {"float_layers": list(quantization.float_layers),
         "max_drop_points": quantization.max_drop_points,
         "calibration": {k: v for k, v in asdict(calibration).items() if k != "plan"}
         if calibration is not None else None}, indent=1) + "\n")


def count_records(folder: Path) -> int:
    path = folder / RECORDS
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


def _record_lines(folder: Path):
    """(workload index, run seconds, target) of each record, in the order measured.

    The one place that reads MetaSchedule's on-disk tuple (`[workload, [trace, run_secs,
    target, args]]`) instead of its Database API: the database returns records sorted by
    speed, not in the order measured, and loading it parses every workload's TIR (seconds for
    one model's logs), too slow for the questions asked here."""
    path = folder / RECORDS
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            workload, (_, run_secs, target, *_rest) = json.loads(line)
            yield int(workload), [float(s) for s in run_secs or ()], target
        except (ValueError, TypeError):
            continue  # `repair` names such lines; here they count for nothing


def record_targets(folder: Path) -> set[str]:
    """The distinct targets (canonical JSON) that the folder's records were tuned for.

    A job asks this of the logs and then of their snapshot (same bytes): the answer is kept by
    the records' hash, which costs a fraction of parsing every record again."""
    import tvm

    path = folder / RECORDS
    if not path.exists():
        return set()
    digest = sha256_file(path)
    if digest not in _TARGETS_BY_RECORDS:
        written = {json.dumps(target, sort_keys=True) for _, _, target in _record_lines(folder)}
        _TARGETS_BY_RECORDS[digest] = frozenset(
            _canonical(tvm.target.Target(json.loads(text))) for text in written)
    return set(_TARGETS_BY_RECORDS[digest])


_TARGETS_BY_RECORDS: dict[str, frozenset[str]] = {}


def measured_in_order(folder: Path) -> list[tuple[int, float | None]]:
    """(workload index, mean seconds, None if it failed) for each record in the order it was
    measured: what a tuning curve plots."""
    return [(workload, sum(secs) / len(secs) if secs and sum(secs) / len(secs) < 1e9 else None)
            for workload, secs, _ in _record_lines(folder)]


def check_target(folder: Path, target: dict, device: str) -> None:
    """Refuse logs tuned for a target other than the device class's."""
    import tvm

    wanted = _canonical(tvm.target.Target(dict(target)))
    others = record_targets(folder) - {wanted}
    if others:
        example = json.loads(sorted(others)[0])
        keys = ("mtriple", "mcpu", "mattr", "num-cores")
        brief = {k: example.get(k) for k in keys if k in example}
        raise UserError(
            f"The tuning logs in {folder} were tuned for another target ({brief}) than device "
            f"'{device}' ({ {k: target.get(k) for k in brief} }). Applying them would build "
            f"kernels for the wrong CPU. Move that folder aside to tune afresh, or pick the "
            f"device class those logs belong to.")


def buildable_device(device: DeviceConfig, folder: Path) -> DeviceConfig:
    """`device` as the logs in `folder` can build it. A detected `host` whose logs were tuned
    on another CPU model takes that model's target when this CPU executes every instruction of
    it: committed logs then build on every machine that can run what they produce, instead of
    only on the CPU that tuned them. Anything else is returned as it is (and `check_target`
    refuses logs of another target)."""
    import tvm

    logged = logged_target(folder) if device.detected else None
    if logged is None:
        return device
    if _canonical(tvm.target.Target(logged)) == _canonical(tvm.target.Target(device.target)):
        return device
    return device.with_target(logged) if runs_target(logged) else device


def logged_target(folder: Path) -> dict | None:
    """The one target the records in `folder` were tuned for (None: no records, or several)."""
    targets = record_targets(folder)
    if len(targets) != 1:
        return None
    return {k: v for k, v in json.loads(next(iter(targets))).items() if k in TARGET_KEYS}


def _canonical(target) -> str:
    return json.dumps(json.loads(str(target)), sort_keys=True)


def file_hashes(folder: Path) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in LOG_FILES if (folder / name).exists()}
