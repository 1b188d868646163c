"""Tuning logs: MetaSchedule's JSON database (two append-only JSON-lines files) in one folder.

A folder per device class and model variant: tuning_logs/<device>/<model>-<variant>/. Records
are appended as they are measured, so a crash loses at most the line being written; `repair`
moves such a truncated or corrupt line aside before MetaSchedule (which would refuse the whole
file) reads it. Every record names the target it was tuned for: `check_target` refuses logs of
another target, which the database itself would happily apply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.devices import TARGET_KEYS, DeviceConfig, runs_target
from pipeline.errors import UserError

LOG_ROOT = Path(__file__).resolve().parent.parent / "tuning_logs"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOG_FILES = (WORKLOADS, RECORDS)


def log_dir(device: str, model: str, variant: str, root: Path = LOG_ROOT) -> Path:
    return root / device / f"{model}-{variant}"


@dataclass(frozen=True)
class RepairReport:
    dropped: tuple[str, ...]  # "file:line: why" for each line moved aside


def repair(folder: Path) -> RepairReport:
    """Move unparsable lines of both files to *.rejected so the rest still loads."""
    dropped: list[str] = []
    for name in LOG_FILES:
        path = folder / name
        if not path.exists():
            continue
        good, bad = [], []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError as err:
                bad.append(line)
                dropped.append(f"{path}:{number}: {err.msg}")
        if bad:
            with open(folder / (name + ".rejected"), "a") as rejected:
                rejected.write("\n".join(bad) + "\n")
            atomic_write(path, "".join(line + "\n" for line in good))
    return RepairReport(tuple(dropped))


def snapshot(folder: Path, dest: Path) -> RepairReport:
    """Copy the logs as they are now (a tuner may still be appending) and set aside any line
    cut short, so that what is built and what is bundled are the very same records."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        source = folder / name
        (dest / name).write_bytes(source.read_bytes() if source.exists() else b"")
    return repair(dest)


def count_records(folder: Path) -> int:
    path = folder / RECORDS
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def record_targets(folder: Path) -> set[str]:
    """The distinct targets (canonical JSON) that the folder's records were tuned for."""
    import tvm

    path = folder / RECORDS
    if not path.exists():
        return set()
    targets = set()
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)[1]
            targets.add(_canonical(tvm.target.Target(record[2])))
    return targets


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

    targets = record_targets(folder) if device.detected else set()
    if len(targets) != 1:
        return device
    logged = {k: v for k, v in json.loads(next(iter(targets))).items() if k in TARGET_KEYS}
    if _canonical(tvm.target.Target(logged)) == _canonical(tvm.target.Target(device.target)):
        return device
    return device.with_target(logged) if runs_target(logged) else device


def _canonical(target) -> str:
    return json.dumps(json.loads(str(target)), sort_keys=True)


def file_hashes(folder: Path) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in LOG_FILES if (folder / name).exists()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary sibling, then rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
