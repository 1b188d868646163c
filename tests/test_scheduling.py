"""Which kernel gets the next batch of trials: the first round for every kernel, then the kernel
with the most model time to gain (pipeline/compile/scheduling.py). Every tuning test on a board
(test_tune_build, test_interrupt, test_transfer) runs through the scheduler; a board run that
goes past the first round costs about half a minute per batch (4.7 min for tiny-cnn), so the choice
itself is checked here."""

from pipeline.compile.scheduling import KernelState, priority


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
