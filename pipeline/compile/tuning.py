"""MetaSchedule over RPC: tasks, builder and runner for a device class, progress, resume.

Tuning is slow on small machines, so: records already in the logs count toward the budget
(a met budget tunes nothing), every measured record is appended to the logs at once (Ctrl-C or
a crash loses only the batch in flight), and progress says trials done/total, the best latency
of each task, the estimated model latency and an ETA."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.tuning_logs import (
    best_records,
    check_target,
    count_records,
    exclusive,
    forget_transferred,
    open_database,
    repair,
    seeded_database,
)
from pipeline.base.background import every
from pipeline.base.devices import DeviceConfig
from pipeline.base.errors import EXIT_USER_ERROR, UserError
from pipeline.base.paths import BUILD_ROOT
from pipeline.compile.cost_model import TrainedCostModel, for_tuning
from pipeline.compile.extensions import extensions_for, tune_context
from pipeline.compile.progress import STOP_TUNING, Progress
from pipeline.compile.scheduling import KernelState, gain_first, priority
from pipeline.farm.boards import board_info
from pipeline.farm.processes import kill_descendants
from pipeline.farm.tracker import TrackerAddress, tracker_summary, wait_for_boards

log = logging.getLogger(__name__)

WORK_ROOT = BUILD_ROOT / "tune-work"  # MetaSchedule's own files (cost model, task logs)


@dataclass(frozen=True)
class TuneResult:
    folder: Path
    trials_before: int
    trials_after: int
    tasks: int
    estimated_ms: float | None  # sum over tasks of weight x best measured latency
    interrupted: bool = False


def build_candidate(mod, target, _params):
    """MetaSchedule builder build function: MetaSchedule's default minus its import of
    tvm.s_tir.tensor_intrin, which takes tens of seconds (it parses every GPU intrinsic) in
    every fresh builder process, i.e. once per batch: the candidates arrive already scheduled
    (tensorized blocks included), so building them needs no registered intrinsic."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_shared(mod, compiler: str, scratch: str) -> str:
    """MetaSchedule builder export: link a .so on the host with the class's (cross) compiler,
    because boards have no compiler of their own. Under `scratch`, which the run removes."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="candidate-", dir=scratch), "candidate.so")
    mod.export_library(path, fcompile=cc.create_shared, cc=compiler)
    return path


def tune(lowered_mod, device: DeviceConfig, folder: Path, trials: int,
         tracker: TrackerAddress, seed: Path | None = None,
         cost_model: TrainedCostModel | None = None) -> TuneResult:
    """Tune the kernels of `lowered_mod` (pipeline.compile.lowering) on boards of `device`
    until the logs in `folder` hold `trials` records, appending each as it is measured; with
    `seed`, the search starts from the best records of another folder's logs (read only); with
    `cost_model`, candidates are ranked by it from the first batch. One tuner at a time per
    folder: a second one is refused while the first holds the lock."""
    with exclusive(folder):
        return _tune_locked(lowered_mod, device, folder, trials, tracker, seed, cost_model)


def _tune_locked(lowered_mod, device: DeviceConfig, folder: Path, trials: int,
                 tracker: TrackerAddress, seed: Path | None,
                 cost_model: TrainedCostModel | None) -> TuneResult:
    from tvm.s_tir import meta_schedule as ms

    for line in repair(folder).dropped:
        log.warning(f"moved a corrupt tuning record aside: {line}")
    check_target(folder, device.target, device.name)
    before = count_records(folder)
    extracted = tunable_tasks(lowered_mod, device.tvm_target())
    remaining = trials - before
    # With the budget met only each kernel's best is asked for, which loads in a fraction.
    database = open_database(folder) if remaining > 0 else best_records(folder)
    per_task = device.tuning.trials_per_task
    history = {t.task_name: _history(database, t) for t in extracted}
    batch = min(32, per_task)
    states = {t.task_name: KernelState(float(t.weight), count, best)
              for t, (count, best) in zip(extracted, history.values(), strict=True)}
    todo = sorted(extracted, key=lambda t: priority(states[t.task_name], per_task, batch))
    first_round = sum(states[t.task_name].trials < per_task for t in extracted)
    progress = Progress(extracted, before, trials, folder)
    progress.best.update({name: best for name, (_, best) in history.items() if best is not None})
    if remaining <= 0:
        estimate = progress.estimate_ms()
        log.info(f"tuning: budget met ({before} trials in {folder}, budget {trials}); nothing "
                 f"to tune" + (f"; estimated model latency {estimate:.2f} ms" if estimate else ""))
        return TuneResult(folder, before, before, len(extracted), progress.estimate_ms())
    boards = wait_for_boards(tracker, device.rpc_key)
    board = board_info(tracker, device.rpc_key)
    emulated = board.emulated
    progress.timing = board.timing
    if board.modeled:
        log.info(f"the '{device.rpc_key}' boards are {board.modeled}: candidates are ranked by "
                 f"the model's latency")
    elif emulated:
        log.info(f"the '{device.rpc_key}' boards are emulated: candidates are checked there, "
                 f"but their timings are not performance figures")
    log.info(f"tuning {len(extracted)} tasks on {boards} '{device.rpc_key}' board(s) via "
             f"{tracker}: {remaining} more trials (budget {trials}, {before} in the logs); "
             f"{first_round} kernels still need their first {per_task}, then each batch of "
             f"{batch} goes to the kernel with the most model time to gain")
    work_dir = WORK_ROOT / folder.parent.name / folder.name
    # Candidate libraries of this run; a run killed outright leaves them to the next one.
    candidates = work_dir / "candidates"
    shutil.rmtree(candidates, ignore_errors=True)
    candidates.mkdir(parents=True)
    extensions = extensions_for(device.tvm_target())
    extensions.register_intrinsics()  # the space generator tensorizes with them
    # Seeded by the records already there: a resumed run explores other candidates than the
    # run before it, and the same logs resume the same way.
    contexts, weights = _tune_contexts(todo, extensions.space_generator(), seed=before)
    search_database = database
    if seed is not None:
        search_database, seeds = seeded_database(database, seed)
        log.info(f"warm start: the search begins from {seeds} valid records in {seed}")
    if cost_model is not None:
        log.info(f"cost model: starting from {cost_model}")
    runner = board_runner(device, tracker, boards, emulated, bool(board.modeled))
    with _graceful_ctrl_c(progress), _removed_after(candidates), _stopped_by(progress), \
            _tracker_watched(tracker, folder), stopped_on_exit(runner):
        try:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                max_trials_global=remaining, max_trials_per_task=remaining,
                # Each batch costs seconds of evolutionary search whatever its size: 32
                # amortizes that and still gives every task a second, cost-model-guided batch
                # within 64 trials.
                num_trials_per_iter=batch,
                builder=ms.builder.LocalBuilder(
                    f_build=build_candidate,
                    f_export=functools.partial(export_shared, compiler=device.compiler(),
                                               scratch=str(candidates)),
                    timeout_sec=120 if emulated else 30),
                runner=runner, database=search_database,
                cost_model=for_tuning(cost_model) if cost_model else "xgb",
                # MetaSchedule's gradient scheduler would hold the whole first round (hundreds
                # of trials) in memory before writing any.
                task_scheduler=gain_first(states, progress.best, per_task, batch),
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   progress.callback()],
            )
        finally:  # the kernels searched now are no longer transfer's alone
            forget_transferred(folder, progress.searched)
    if progress.unsaved:
        raise UserError(f"{progress.unsaved} measured trials did not reach {folder} (is the disk "
                        f"full?); tuning stopped. The logs hold every record counted there. "
                        f"Free some space and run the same command again to resume.")
    interrupted = progress.stop_requested
    if interrupted:
        log.info("interrupted: every measured trial is in the logs; run the same command again "
                 "to resume")
    after = count_records(folder)
    return TuneResult(folder, before, after, len(extracted), progress.estimate_ms(), interrupted)


@contextlib.contextmanager
def _graceful_ctrl_c(progress: Progress):
    """First Ctrl-C (or SIGTERM): record the batch in flight, then stop. Second: abort now.

    A KeyboardInterrupt raised inside MetaSchedule's C++ loop (through its Python callbacks)
    crashes the process, so the first Ctrl-C only sets a flag that the measure callback acts
    on once the batch in flight is recorded."""
    def on_sigint(signum, frame):
        progress.stop_requested = True
        log.info("\nCtrl-C: stopping after the batch in flight is recorded (Ctrl-C again to "
                 "abort at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    # SIGTERM (a supervisor, `kill`) stops the same way, so the embedded farm is shut down too.
    previous_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


@contextlib.contextmanager
def _stopped_by(progress: Progress):
    """The measure callback stops tuning by raising STOP_TUNING through MetaSchedule's loop."""
    try:
        yield
    except RuntimeError as err:
        if STOP_TUNING not in str(err) or not progress.stop_requested:
            raise


TRACKER_GRACE_S = 60.0  # how long the tracker may not answer before tuning gives up
GRACE_VARIABLE = "PIPELINE_TRACKER_GRACE_S"  # sets it for one run
TRACKER_CHECK_S = 10.0


def tracker_grace_s() -> float:
    text = os.environ.get(GRACE_VARIABLE, "")
    if not text:
        return TRACKER_GRACE_S
    try:
        grace = float(text)
    except ValueError:
        grace = -1.0
    if not grace > 0:
        raise UserError(f"{GRACE_VARIABLE}={text!r} must be a number of seconds above 0, e.g. "
                        f"{TRACKER_GRACE_S:g} (the default).")
    return grace


def _tracker_watched(tracker: TrackerAddress, folder: Path):
    """Leave the process if the tracker stops answering for its grace (TRACKER_GRACE_S, or
    $PIPELINE_TRACKER_GRACE_S): MetaSchedule's
    runner would retry it for a minute per trial left, hours in all, and no batch that needs
    it can finish. Every trial measured before is in the logs; the embedded farm's watchdog
    stops its boards."""
    silent_since: float | None = None
    grace_s = tracker_grace_s()

    def check() -> None:
        nonlocal silent_since
        try:
            tracker_summary(tracker, timeout_s=TRACKER_CHECK_S)
            silent_since = None
        except UserError as err:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= grace_s:
                log.error(f"error: tuning stopped: {err} Every trial measured before is in "
                          f"{folder}; run the same command again to resume.")
                logging.shutdown()
                kill_descendants(os.getpid())  # builder workers would keep running
                os._exit(EXIT_USER_ERROR)

    return every(TRACKER_CHECK_S, check, "tracker-watch")


@contextlib.contextmanager
def _removed_after(folder: Path):
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


TASK_LOGGER = "tvm.s_tir.meta_schedule.tasks"


def _tune_contexts(tasks, space, seed: int):
    """One TuneContext per task, as MetaSchedule's `extracted_tasks_to_tune_contexts` makes
    them, but logging to a plain logger of ours: MetaSchedule's own set-up rebuilds its loggers
    with `logging.config.dictConfig` from the names of every handler already on them, and
    crashes on a handler it did not create (pytest's, or a user application's, unnamed ones)."""
    from tvm.s_tir.meta_schedule.utils import fork_seed

    logger = logging.getLogger(TASK_LOGGER)
    contexts = [tune_context(mod=task.dispatched[0], target=task.target,
                               space_generator=space, search_strategy="evolutionary",
                               task_name=task.task_name, logger=logger, rand_state=rand_state,
                               num_threads="physical").clone()
                for task, rand_state in zip(tasks, fork_seed(seed, n=len(tasks)), strict=True)]
    return contexts, [float(task.weight) for task in tasks]


def tunable_tasks(lowered_mod, target) -> list:
    """The kernels MetaSchedule tunes (ExtractedTask): the fused TIR functions not already
    scheduled by hand."""
    from tvm.s_tir import meta_schedule as ms

    return [task for task in ms.relax_integration.extract_tasks(lowered_mod, target)
            if not task.mod.attrs.get("tirx.is_scheduled", False)]


def task_records(folder: Path, tasks: list) -> dict[str, tuple[int, float | None]]:
    """Per task name: valid records in the logs and the best mean latency (s) among them."""
    database = open_database(folder)
    return {task.task_name: _history(database, task) for task in tasks}


def _history(database, task) -> tuple[int, float | None]:
    """Valid records of the task already in the logs, and the best mean latency among them."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0, None
    records = database.get_top_k(database.commit_workload(mod), 1 << 20)
    if not records:
        return 0, None
    best = min(sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in records)
    return len(records), best


@contextlib.contextmanager
def stopped_on_exit(runner):
    """The runner's worker processes killed on the way out, however it is left: a worker busy
    with a board would otherwise outlive the job (re-parented, retrying a tracker that is gone)."""
    try:
        yield runner
    finally:
        runner.pool.shutdown(wait=False)


def board_runner(device: DeviceConfig, tracker: TrackerAddress, boards: int, emulated: bool,
            modeled: bool = False):
    from tvm.s_tir import meta_schedule as ms

    if modeled:  # the model gives the same time every run: one run after the uncounted one
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0)
        timeout = 300  # a candidate runs at about a 40th of native speed under the model
    elif emulated:  # emulated timings are meaningless: one run each, only to prove it runs
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0)
        # A candidate takes seconds under qemu, but now and then a session forked by the
        # board's multi-threaded server hangs: it is abandoned after
        # this long and counted as a failed trial, and the board serves the next one.
        timeout = 120
    else:
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                              enable_cpu_cache_flush=False)
        timeout = 60
    config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port,
                                 tracker_key=device.rpc_key, session_timeout_sec=timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               max_workers=max(boards, 1))
