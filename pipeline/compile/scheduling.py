"""Which kernel gets the next batch of trials.

First a round: every kernel gets `first_round` trials (kernels with no records first, then by
the time the model spends in them), because an untuned kernel costs more than a tuned one saves.
After it, each batch goes to the kernel with the most model time expected from one more batch:
what its last batch gained, if that was more, else a share of its time that shrinks with the
batches it has had (the backward and forward estimates of Ansor's task scheduler, Zheng et al.,
OSDI 2020, in spirit). The batch in flight is joined before the next is chosen, so every
measured trial reaches the logs as its batch ends, as with round-robin."""

from __future__ import annotations

from dataclasses import dataclass

# What one more batch is expected to take off a kernel's time after its first: this share,
# divided by the batches it has had.
FORWARD_SHARE = 0.2


@dataclass
class KernelState:
    weight: float  # occurrences in the model
    trials: int  # valid records in the logs and measured in this run
    best_s: float | None  # best mean latency so far
    last_gain_s: float = 0.0  # what its last batch took off best_s


def priority(state: KernelState, first_round: int, batch: int) -> tuple:
    """Lower comes first: the first round, then the most expected model time gained."""
    if state.trials < first_round or state.best_s is None:
        return (0, state.trials > 0, -state.weight * (state.best_s or 0.0))
    forward = state.best_s * FORWARD_SHARE * batch / state.trials
    return (1, -state.weight * max(state.last_gain_s, forward))


def gain_first(states: dict[str, KernelState], best_s: dict[str, float], first_round: int,
               batch: int):
    """A MetaSchedule task scheduler choosing by `priority`; `best_s` is the tuning progress'
    best latency per task, which the measure callbacks update as a batch is joined."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class GainFirst(PyTaskScheduler):
        def next_task_id(self) -> int:
            tasks = self._outer().tasks_
            for task_id, task in enumerate(tasks):
                if task.runner_futures is not None:
                    name = task.ctx.task_name
                    state, before = states[name], best_s.get(name)
                    state.trials += len(task.runner_futures)
                    self.join_running_task(task_id)
                    state.best_s = best_s.get(name)
                    if before is not None and state.best_s is not None:
                        state.last_gain_s = max(before - state.best_s, 0.0)
            live = [i for i, task in enumerate(tasks) if not task.is_terminated]
            if not live:
                return -1
            return min(live, key=lambda i: priority(states[tasks[i].ctx.task_name],
                                                    first_round, batch))

    return GainFirst()
