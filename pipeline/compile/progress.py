"""Tuning progress: trials done/total, best latency per task, estimated model latency, ETA;
and the measure callback that feeds it and stops tuning on request."""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.2f} us"


class Progress:
    """Trials done/total, best latency per task, estimated model latency, ETA."""

    def __init__(self, tasks, before: int, total: int, emulated: bool = False):
        self.names = [t.task_name for t in tasks]
        self.emulated = emulated  # timings from qemu: ranks candidates roughly, not performance
        self.weights = {t.task_name: t.weight for t in tasks}
        self.best: dict[str, float] = {}
        self.before, self.total = before, total
        self.measured = 0
        self.started = time.monotonic()
        self.stop_requested = False

    def estimate_ms(self) -> float | None:
        if not self.best or len(self.best) < len(self.names):
            return None
        return sum(self.weights[n] * s for n, s in self.best.items()) * 1e3

    def record(self, task_name: str, run_secs: list[float]) -> None:
        self.measured += 1
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
        if self.emulated:
            best_text, est = f"{best_text} (emulated)", f"{est} (emulated, not a real figure)"
        log.info(f"[{done}/{self.total} trials] {task_name}: best {best_text} | model est. {est} | "
              f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")

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
                if progress.stop_requested:
                    for other in range(len(task_scheduler.tasks_)):
                        if not task_scheduler.tasks_[other].is_terminated:
                            task_scheduler.terminate_task(other)

        return ProgressCallback()
