"""Repair of a tuning log folder that a crash, a full disk or a hand edit left damaged.

MetaSchedule refuses a whole folder for one bad line, and its records point to workloads by
line number. So repair renumbers nothing: a record line that is not a well-formed record, or
that points to a workload that is missing or damaged, is moved to `<file>.rejected` and named;
a damaged workload line in the middle is replaced by a placeholder workload that nothing
tunes, so every later index still means what it meant. A last line cut short (the crash
happened mid-write) is set aside the same way, and a file always ends with a newline, so the
next append starts a line of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.files import atomic_write

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


@dataclass(frozen=True)
class RepairReport:
    dropped: tuple[str, ...]  # "file:line: why" for each line moved aside


def repair(folder: Path) -> RepairReport:
    dropped: list[str] = []
    workloads = _lines(folder / WORKLOADS)
    damaged = {i for i, line in enumerate(workloads) if _workload_problem(line)}
    # A damaged last workload with no record after it is dropped; one in the middle keeps its
    # place (a placeholder), or every record after it would point to the wrong workload.
    while workloads and len(workloads) - 1 in damaged:
        damaged.discard(len(workloads) - 1)
        dropped.append(_note(folder / WORKLOADS, len(workloads), _workload_problem(
            workloads[-1])))
        _reject(folder / WORKLOADS, [workloads.pop()])
    for index in sorted(damaged):
        dropped.append(_note(folder / WORKLOADS, index + 1, _workload_problem(workloads[index])
                             + "; replaced by a placeholder"))
        _reject(folder / WORKLOADS, [workloads[index]])
        workloads[index] = _placeholder_workload(index).encode()
    kept, bad = [], []
    for number, line in enumerate(_lines(folder / RECORDS), 1):
        problem = _record_problem(line, len(workloads), damaged)
        if problem:
            bad.append(line)
            dropped.append(_note(folder / RECORDS, number, problem))
        else:
            kept.append(line)
    _reject(folder / RECORDS, bad)
    for name, lines in ((WORKLOADS, workloads), (RECORDS, kept)):
        path = folder / name
        text = b"".join(line + b"\n" for line in lines)
        if path.exists() and path.read_bytes() != text:
            atomic_write(path, text.decode())
    return RepairReport(tuple(dropped))


def _lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def _parse(line: bytes):
    try:
        return json.loads(line.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except ValueError as err:
        return None, f"not JSON ({getattr(err, 'msg', err)})"


def _workload_problem(line: bytes) -> str:
    value, problem = _parse(line)
    if problem:
        return problem
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        return "not a workload ([hash, module])"
    return ""


def _record_problem(line: bytes, workloads: int, damaged: set[int]) -> str:
    value, problem = _parse(line)
    if problem:
        return problem
    try:
        index, (trace, run_secs, target, args) = value
        well_formed = (isinstance(index, int) and not isinstance(index, bool)
                       and isinstance(trace, list) and isinstance(target, dict)
                       and isinstance(args, list) and (run_secs is None or (
                           isinstance(run_secs, list)
                           and all(isinstance(s, int | float) for s in run_secs))))
    except (TypeError, ValueError):
        well_formed = False
    if not well_formed:
        return "not a tuning record ([workload, [trace, run_secs, target, args]])"
    if not 0 <= index < workloads:
        return f"points to workload {index}, and the logs hold {workloads}"
    if index in damaged:
        return f"points to workload {index}, which was damaged"
    return ""


def _placeholder_workload(index: int) -> str:
    """A workload line that loads, is unlike any other (MetaSchedule merges equal workloads, and
    the next one it appends must land at the next line), and that no record points to."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    out = te.compute((1,), lambda _: tvm.tirx.const(index, "int32"), name="placeholder")
    mod = tvm.IRModule({"main": te.create_prim_func([out])})
    return json.dumps(ms.database.Workload(mod).as_json())


def _reject(path: Path, lines: list[bytes]) -> None:
    if lines:
        with open(path.with_name(path.name + ".rejected"), "ab") as rejected:
            rejected.write(b"".join(line + b"\n" for line in lines))


def _note(path: Path, number: int, problem: str) -> str:
    return f"{path}:{number}: {problem}"
