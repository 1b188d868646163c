"""Which kernel gets the next batch of trials: the first round for every kernel, then the kernel
with the most model time to gain (pipeline/compile/scheduling.py), on a real host board."""

import dataclasses
import json
from collections import Counter

import pytest

from pipeline.artifact.tuning_logs import RECORDS, count_records
from pipeline.base.devices import Tuning
from pipeline.compile.lowering import lower
from pipeline.compile.scheduling import KernelState, priority
from pipeline.compile.tuning import tunable_tasks, tune
from pipeline.frontend.importer import import_model


def test_the_first_round_comes_first_then_the_most_time_to_gain():
    untouched = KernelState(weight=1, trials=0, best_s=None)
    begun = KernelState(weight=1, trials=8, best_s=1e-3)
    heavy = KernelState(weight=3, trials=32, best_s=2e-3)  # 6 ms of the model
    light = KernelState(weight=1, trials=32, best_s=1e-3)  # 1 ms
    order = sorted([light, heavy, begun, untouched], key=lambda s: priority(s, 32, 32))
    assert order == [untouched, begun, heavy, light]
    # A kernel that has had many batches is expected to gain less from one more...
    worn = KernelState(weight=3, trials=32 * 8, best_s=2e-3)  # 0.2 x 6 ms / 8 = 0.15 ms
    assert priority(light, 32, 32) < priority(worn, 32, 32)  # 0.2 x 1 ms = 0.2 ms
    # ... unless its last batch gained more than that.
    worn.last_gain_s = 0.1e-3  # x 3 occurrences: 0.3 ms
    assert priority(worn, 32, 32) < priority(light, 32, 32)


@pytest.mark.slow
def test_trials_past_the_first_round_go_to_the_slowest_kernel(host_device, tiny_model,
                                                               host_farm, tmp_path):
    per_task, extra = 4, 8
    lowered = lower(import_model(tiny_model).mod, host_device.tvm_target())
    tasks = tunable_tasks(lowered, host_device.tvm_target())
    assert {task.weight for task in tasks} == {1}  # so the slowest kernel is the one to gain
    budget = per_task * len(tasks) + extra
    device = dataclasses.replace(host_device, tuning=Tuning(budget, per_task))
    folder = tmp_path / "logs"
    result = tune(lowered, device, folder, budget, host_farm)
    assert result.trials_after == count_records(folder) >= budget - per_task
    records = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    trials, best = Counter(), {}
    for workload, (_trace, run_secs, *_rest) in records:
        if trials[workload] >= per_task:  # the first batch past the first round
            break
        trials[workload] += 1
        if run_secs:
            best[workload] = min(best.get(workload, 1e9), sum(run_secs) / len(run_secs))
    else:
        pytest.fail(f"no kernel got trials past its first round: {trials}")
    # Kernels whose whole space is smaller than a round (a transpose) end early; every other
    # kernel got its round before any got more.
    assert sum(n == per_task for n in trials.values()) >= len(tasks) - 2, trials
    assert workload == max(best, key=best.get), (workload, best)
