"""Tuning progress: trials done/total, best latency per task, estimated model latency, ETA;
and the measure callback that feeds it and stops tuning on request."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from pipeline.artifact.tuning_logs import count_records

log = logging.getLogger(__name__)
STOP_TUNING = "edge-tvm-pipeline: tuning stopped on request"


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.2f} us"


class Progress:
    """Trials done/total, best latency per task, estimated model latency, ETA."""

    def __init__(self, tasks, before: int, total: int, folder: Path | None = None,
                 timing: str | None = "measured"):
        self.names = [t.task_name for t in tasks]
        # What the boards' timings are: "measured", a timing model's label ("modeled (...)"),
        # or None for emulated boards (qemu's wall clock: ranks candidates roughly, no figure)
        self.timing = timing
        self.weights = {t.task_name: t.weight for t in tasks}
        self.best: dict[str, float] = {}
        self.before, self.total = before, total
        self.folder = folder  # the logs every measured trial must reach
        self.measured = 0
        self.searched: set[str] = set()  # tasks that got measured trials in this run
        self.unsaved = 0  # measured trials the logs do not hold (a full disk fails silently)
        self.started = time.monotonic()
        self.stop_requested = False

    def estimate_ms(self) -> float | None:
        if not self.best or len(self.best) < len(self.names):
            return None
        return sum(self.weights[n] * s for n, s in self.best.items()) * 1e3

    def record(self, task_name: str, run_secs: list[float]) -> None:
        self.measured += 1
        self.searched.add(task_name)
        if run_secs:
            seconds = sum(run_secs) / len(run_secs)
            if math.isfinite(seconds) and seconds < self.best.get(task_name, math.inf):
                self.best[task_name] = seconds

    def report(self, task_name: str) -> None:
        done = self.before + self.measured
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.measured * max(self.total - done, 0) if self.measured else 0
        estimate = self.estimate_ms()
        est = f"{estimate:.2f} ms" if estimate is not None else (
            f"? ({len(self.best)}/{len(self.names)} tasks measured)")
        best = self.best.get(task_name)
        best_text = _duration(best) if best is not None else "none valid yet"
        if self.timing is None:
            best_text, est = f"{best_text} (emulated)", f"{est} (emulated, not a real figure)"
        elif self.timing != "measured":
            best_text, est = f"{best_text} {self.timing}", f"{est} {self.timing}"
        log.info(f"[{done}/{self.total} trials] {task_name}: best {best_text} | model est. "
                 f"{est} | elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")

    def check_saved(self) -> None:
        """MetaSchedule's JSON database ignores a failed append (a full disk): compare what
        reached the logs with what was measured, and ask to stop if anything is missing."""
        if self.folder is not None:
            self.unsaved = max(self.before + self.measured - count_records(self.folder), 0)
            self.stop_requested |= self.unsaved > 0

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        progress = self

        @derived_object
        class ProgressCallback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                      runner_results) -> None:
                name = task_scheduler.tasks_[task_id].ctx.task_name
                for result in runner_results:
                    secs = [float(s) for s in result.run_secs] if result.run_secs else []
                    progress.record(name, [] if result.error_msg else secs)
                progress.report(name)
                progress.check_saved()
                if progress.stop_requested:
                    # Raised through MetaSchedule's loop, which unwinds cleanly; the batch's
                    # records are saved by the callbacks before this one. (Terminating tasks
                    # from here instead fails TVM's check when the task being joined is
                    # terminated twice.)
                    raise RuntimeError(STOP_TUNING)

        return ProgressCallback()
