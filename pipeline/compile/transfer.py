"""Transfer tuning: schedules for kernels that have no tuning records, borrowed from records of
the same kind of kernel in other logs of the device class.

A record's trace is the schedule as a program of primitives (split, reorder, vectorize, ...)
whose random choices are kept as decisions. It replays on another workload of the same kind
(the same blocks, in the same dtypes: a 1x1 convolution with bias and ReLU6, a depthwise 3x3, a
dense) once its tile sizes are re-derived for the new loop extents. For each such kernel the
candidates from the source workloads of the nearest shapes are built and measured on a board of
the class, and every one that runs is committed to the logs as a measured record: the build
applies the fastest, and a later tuning run starts its search from them. The logs say which
kernels came from where (`tuning_logs.transferred`).

Method after Gibson & Cano, "Transfer-Tuning: Reusing Auto-Schedules for Efficient Tensor
Program Code Generation" (PACT 2022)."""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.tuning_logs import (
    FAILED_RUN_SECS,
    RECORDS,
    WORKLOADS,
    best_records,
    has_valid_records,
    logged_target,
    open_database,
    ran,
    record_transferred,
    repair,
)
from pipeline.base.devices import DeviceConfig
from pipeline.compile import tuning
from pipeline.compile.extensions import extensions_for, tune_context
from pipeline.farm.boards import board_info
from pipeline.farm.tracker import TrackerAddress, wait_for_boards

log = logging.getLogger(__name__)

NEAREST_SOURCES = 3  # source workloads per kernel, nearest shapes first
RECORDS_PER_SOURCE = 2  # their best records
BATCH = 32  # candidates built per builder call (one process pool start each)


@dataclass(frozen=True)
class TransferredKernel:
    task: str
    kernel: str  # the kernel's kind and loop extents, e.g. conv2d_nhwc[1,56,56,24,1,1,144]
    source_logs: str  # the logs folder, relative to the tuning-log root
    source_kernel: str
    latency_s: float  # the fastest candidate, measured on a board of the class
    records: int  # measured candidates committed to the logs


@dataclass(frozen=True)
class TransferResult:
    kernels: tuple[TransferredKernel, ...]
    measured: int  # candidates built and run on boards


@dataclass(frozen=True)
class _Source:
    folder: str
    kernel: str
    kind: tuple
    extents: tuple[int, ...]
    records: tuple  # valid TuningRecords, fastest first


def transfer_sources(device: DeviceConfig, own: Path, log_root: Path,
                     also: tuple[str, ...] = ()) -> list[Path]:
    """Every logs folder of `device`'s class (and of the classes in `also`) but `own`, which
    transfer fills: the records a kernel with none of its own may borrow."""
    folders = []
    for name in (device.name, *also):
        root = log_root / name
        folders += sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [f for f in folders if f.resolve() != own.resolve() and (f / RECORDS).exists()]


def transfer(lowered_mod, device: DeviceConfig, folder: Path, sources: list[Path],
             log_root: Path, tracker: TrackerAddress) -> TransferResult:
    """Give each kernel of `lowered_mod` that has no records in `folder` the fastest schedule
    transferred from `sources`, measured on the class's boards through `tracker`, and commit
    every measured candidate to `folder`."""
    from tvm.s_tir import meta_schedule as ms

    if not sources:
        return TransferResult((), 0)
    target = device.tvm_target()
    extensions = extensions_for(target)
    extensions.register_intrinsics()  # source records may name them
    for line in repair(folder).dropped:  # a crash may have cut the last record short
        log.warning("moved a corrupt tuning record aside: %s", line)
    logged = best_records(folder)
    tasks = [t for t in tuning.tunable_tasks(lowered_mod, target)
             if not has_valid_records(logged, t.dispatched[0])]
    if not tasks:
        return TransferResult((), 0)
    database = open_database(folder)  # what the measured candidates are committed to
    index = _index_sources(sources, log_root)
    log.info("transfer: %d kernels have no tuning records; looking for schedules of the same "
             "kind in %d other logs (%s)", len(tasks), len(sources),
             ", ".join(str(s.relative_to(log_root)) for s in sources))
    # One context for every kernel: its space generator and postprocessors depend on the target
    # only.
    space = tune_context(mod=tasks[0].dispatched[0], target=target, task_name="transfer",
                           space_generator=extensions.space_generator()).space_generator
    pending = [(task, found) for task in tasks if (found := _candidates(task, space, index))]
    boards = wait_for_boards(tracker, device.rpc_key)
    board = board_info(tracker, device.rpc_key)
    runner = tuning.board_runner(device, tracker, boards, board.emulated, bool(board.modeled))
    kernels, measured = [], 0
    with tempfile.TemporaryDirectory(prefix="transfer-") as scratch, tuning.stopped_on_exit(runner):
        builder = ms.builder.LocalBuilder(
            f_build=tuning.build_candidate,
            f_export=functools.partial(tuning.export_shared, compiler=device.compiler(),
                                       scratch=scratch),
            timeout_sec=120 if board.emulated else 30)
        for batch in _batches(pending):
            timed = _measure([c for _, cands in batch for c in cands], target, builder, runner)
            measured += len(timed)
            for task, cands in batch:
                result = _commit(task, cands, timed, database, target)
                if result is None:
                    continue
                kernels.append(result)
                log.info("transfer: %-48s %8.3f ms  from %s %s", task.task_name,
                         result.latency_s * 1e3, result.source_logs, result.source_kernel)
    record_transferred(folder, {k.task: {"kernel": k.kernel, "from": k.source_logs,
                                         "source_kernel": k.source_kernel, "records": k.records}
                                for k in kernels})
    log.info("transfer: %d of %d kernels got a transferred schedule (%d candidates measured)",
             len(kernels), len(tasks), measured)
    return TransferResult(tuple(kernels), measured)


def kernel_kind(func) -> tuple[tuple, tuple[int, ...]]:
    """(kind, loop extents) of a TIR kernel: the kind is its blocks' names with the dtypes they
    read and write, which a trace needs to replay; the extents are every block's iteration
    extents."""
    from tvm import s_tir

    schedule = s_tir.Schedule(func)
    kind, extents = [], []

    def visit(parent) -> None:
        for child in schedule.get_child_blocks(parent):
            block = schedule.get(child)
            kind.append((block.name_hint,
                         tuple(str(r.source.dtype) for r in block.reads),
                         tuple(str(r.source.dtype) for r in block.writes),
                         len(block.iter_vars)))
            extents.extend(int(v.dom.extent) for v in block.iter_vars)
            visit(child)

    visit(schedule.get_sblock("root"))
    return tuple(kind), tuple(extents)


def fit_tiles(extent: int, factors: list[int]) -> list[int]:
    """Tile sizes for a loop of `extent` shaped like `factors` (outermost first). From the
    innermost out, each is a divisor of what is left, not above the old size, sharing the most
    factors with it (a tile of whole vectors stays whole vectors), the larger on a tie; the
    outermost takes the rest."""
    out, left = list(factors), extent
    for i in range(len(out) - 1, 0, -1):
        fitting = [d for d in range(1, max(min(out[i], left), 1) + 1) if left % d == 0]
        out[i] = max(fitting, key=lambda d, old=out[i]: (math.gcd(d, old), d))
        left //= out[i]
    out[0] = left
    return out


def _anchor(kind: tuple, extents: tuple[int, ...]) -> tuple[tuple, tuple[int, ...]]:
    """The kernel's main block (its convolution or matmul, else its first) and its extents."""
    if not kind:
        return (), ()
    at = next((i for i, (name, *_) in enumerate(kind)
               if any(word in name for word in ("conv", "matmul", "dense"))), 0)
    start = sum(block[3] for block in kind[:at])
    return kind[at], extents[start:start + kind[at][3]]


def _describe(kind: tuple, extents: tuple[int, ...]) -> str:
    """The kernel's main block and its loop extents, e.g. conv2d_nhwc[1,56,56,24,1,1,144]."""
    block, loops = _anchor(kind, extents)
    return f"{block[0] if block else 'kernel'}[{','.join(str(e) for e in loops)}]"


def _index_sources(sources: list[Path], log_root: Path) -> list[_Source]:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    index: list[_Source] = []
    for folder in sources:
        logged = logged_target(folder)
        if logged is None:
            continue  # no records, or records of several targets: not a class's logs
        # Its records name the tensor intrinsics of the target they were tuned for.
        extensions_for(tvm.target.Target(logged)).register_intrinsics()
        database = ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS),
                                            path_tuning_record=str(folder / RECORDS),
                                            allow_missing=False)
        grouped: dict = {}  # records of one workload share its object
        for record in filter(ran, database.get_all_tuning_records()):
            grouped.setdefault(record.workload, []).append(record)
        for records in grouped.values():
            kind, extents = kernel_kind(records[0].workload.mod["main"])
            records.sort(key=lambda r: sum(float(s) for s in r.run_secs) / len(r.run_secs))
            index.append(_Source(str(folder.relative_to(log_root)), _describe(kind, extents),
                                 kind, extents, tuple(records[:RECORDS_PER_SOURCE])))
    return index


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(abs(math.log(x) - math.log(y)) for x, y in zip(a, b, strict=True))


def _candidates(task, space, index: list[_Source]) -> list[tuple]:
    """(schedule, source) pairs for the task's kernel that pass the class's postprocessors,
    nearest source shapes first, distinct schedules only. Records of a kernel of the same kind
    replay whole; failing those, the sampled decisions (tiles, unrolling, compute locations) of
    records whose main block is the same (a convolution with another epilogue: ReLU for ReLU6,
    a residual add) are given to the kernel's own design space, where they line up."""
    import tvm_ffi

    mod = task.dispatched[0]
    kind, extents = kernel_kind(mod["main"])
    anchor, anchor_extents = _anchor(kind, extents)
    postprocs = space.postprocs
    same = [s for s in index if s.kind == kind]
    if same:
        same.sort(key=lambda s: _distance(s.extents, extents))
        schedules = ((s, _replayed(mod, r.trace)) for s in same[:NEAREST_SOURCES]
                     for r in s.records)
    else:
        spaces = [sch.trace for sch in space.generate_design_space(mod)]
        structures = [_choices(trace) for trace in spaces]
        related = [s for s in index if _anchor(s.kind, s.extents)[0] == anchor
                   and _choices(s.records[0].trace) in structures]
        related.sort(key=lambda s: _distance(_anchor(s.kind, s.extents)[1], anchor_extents))
        schedules = ((s, _redecided(mod, spaces, r.trace)) for s in related[:NEAREST_SOURCES]
                     for r in s.records)
    found, seen = [], set()
    for source, schedule in schedules:
        if schedule is None:
            continue
        try:
            schedule.enter_postproc()
            if not all(p.apply(schedule) for p in postprocs):
                continue
        except Exception:  # noqa: BLE001 - a schedule the postprocessors reject is no candidate
            continue
        digest = tvm_ffi.structural_hash(schedule.mod)
        if digest not in seen:
            seen.add(digest)
            found.append((schedule, source))
    return found


def _replayed(mod, trace):
    """`trace` applied to `mod` with its tile sizes refitted; None if it does not replay."""
    from tvm import s_tir

    schedule = s_tir.Schedule(mod)

    def refit(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile" and decision is not None:
            return fit_tiles(int(schedule.get(inputs[0]).extent), [int(f) for f in decision])
        return decision

    try:
        trace.apply_to_schedule(schedule, remove_postproc=True, decision_provider=refit)
    except Exception:  # noqa: BLE001 - a trace that does not replay is no candidate
        return None
    return schedule


def _samples(trace) -> list:
    return [inst for inst in trace.insts if inst.kind.name.startswith("Sample")]


COMPUTE_LOCATION = "SampleComputeLocation"
AT_ROOT = -1  # a compute-location decision every block can take: its own loop nest


def _choices(trace) -> list[tuple]:
    """What the trace's tiling and unrolling samples choose from (tile counts, candidate
    counts), in order: the structure two traces of one design space share. Compute locations
    are left out: a padded 3x3 convolution samples one for its padding, a 1x1 one does not."""
    return [(inst.kind.name, *(str(a) if not hasattr(a, "__len__") else len(a)
                               for a in inst.attrs[:1]))
            for inst in _samples(trace) if inst.kind.name != COMPUTE_LOCATION]


def _redecided(mod, spaces: list, trace):
    """The first of the kernel's design spaces whose tiling and unrolling samples line up with
    those of `trace`, applied with `trace`'s decisions (tiles refitted; compute locations in
    order while they last, then at root); None if none lines up."""
    from tvm import s_tir

    wanted = _choices(trace)
    picks = [trace.decisions.get(inst) for inst in _samples(trace)
             if inst.kind.name != COMPUTE_LOCATION]
    locations = [trace.decisions.get(inst) for inst in _samples(trace)
                 if inst.kind.name == COMPUTE_LOCATION]
    for space in spaces:
        if _choices(space) != wanted:
            continue
        for keep_locations in (True, False):
            schedule = s_tir.Schedule(mod)
            given_picks, given_locations = iter(picks), iter(locations if keep_locations else [])

            def given(inst, inputs, attrs, decision, schedule=schedule, given_picks=given_picks,
                      given_locations=given_locations):
                name = inst.kind.name
                if name == COMPUTE_LOCATION:
                    return next(given_locations, AT_ROOT)
                if not name.startswith("Sample"):
                    return decision
                chosen = next(given_picks)
                if name == "SamplePerfectTile":
                    return fit_tiles(int(schedule.get(inputs[0]).extent),
                                     [int(f) for f in chosen])
                return chosen

            try:
                space.apply_to_schedule(schedule, remove_postproc=True, decision_provider=given)
            except Exception:  # noqa: BLE001 - e.g. a compute location this kernel lacks
                continue
            return schedule
    return None


def _batches(pending: list[tuple]):
    batch, size = [], 0
    for item in pending:
        if batch and size + len(item[1]) > BATCH:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item[1])
    if batch:
        yield batch


def _measure(candidates: list[tuple], target, builder, runner) -> dict[int, list[float]]:
    """id(schedule) -> run seconds, for the candidates that built and ran."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(s.mod, target) for s, _ in candidates])
    inputs, owners, errors = [], [], []
    for (schedule, _), result in zip(candidates, built, strict=True):
        if result.error_msg is not None:
            errors.append(f"build: {result.error_msg}")
        else:
            inputs.append(ms.runner.RunnerInput(
                result.artifact_path, device_type="cpu",  # every class is an llvm CPU target
                args_info=ms.arg_info.ArgInfo.from_entry_func(schedule.mod, remove_preproc=True)))
            owners.append(schedule)
    timed = {}
    for schedule, future in zip(owners, runner.run(inputs), strict=True):
        result = future.result()
        if result.error_msg is not None:
            errors.append(f"run: {result.error_msg}")
        elif result.run_secs:
            secs = [float(s) for s in result.run_secs]
            if all(s < FAILED_RUN_SECS for s in secs):
                timed[id(schedule)] = secs
    if errors and not timed:
        log.warning("transfer: none of %d candidates ran; the first error: %s", len(candidates),
                    errors[0].strip()[-600:])
    return timed


def _commit(task, candidates, timed, database, target) -> TransferredKernel | None:
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    runs = [(schedule, source, timed[id(schedule)]) for schedule, source in candidates
            if id(schedule) in timed]
    if not runs:
        return None
    workload = database.commit_workload(mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for schedule, _, secs in runs:
        database.commit_tuning_record(ms.database.TuningRecord(
            schedule.trace, workload, [float(s) for s in secs], target, args_info))
    schedule, source, secs = min(runs, key=lambda run: sum(run[2]) / len(run[2]))
    kind, extents = kernel_kind(mod["main"])
    return TransferredKernel(task.task_name, _describe(kind, extents), source.folder,
                             source.kernel, sum(secs) / len(secs), len(runs))
