"""Run a built library on a board through the tracker: outputs against the framework, timing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifact import Verification
from pipeline.errors import UserError
from rpc.tracker import TrackerAddress


@dataclass(frozen=True)
class BoardRun:
    output: np.ndarray
    times_ms: tuple[float, ...]  # one entry per repeat, empty when not timed


def run_on_board(lib: Path, tracker: TrackerAddress, key: str, x: np.ndarray,
                 repeats: int = 30, timeout_s: int = 600) -> BoardRun:
    """Upload `lib` to a free board of `key`, run `main(x)`, and time `repeats` runs."""
    import tvm
    from tvm import relax, rpc

    try:
        remote = rpc.connect_tracker(tracker.host, tracker.port).request(
            key, priority=1, session_timeout=timeout_s)
    except (OSError, RuntimeError, TimeoutError) as err:
        raise UserError(f"Could not get a '{key}' board from the tracker at {tracker} ({err}). "
                        f"python -m tvm.exec.query_rpc_tracker --host {tracker.host} --port "
                        f"{tracker.port} lists the boards.") from None
    remote.upload(str(lib))
    module = remote.load_module(lib.name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(module, dev)
    inp = tvm.runtime.tensor(x, dev)
    output = vm["main"](inp).numpy()
    times: tuple[float, ...] = ()
    if repeats:
        vm.set_input("main", inp)
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeats,
                                  min_repeat_ms=0)
        times = tuple(float(t) * 1e3 for t in timer("main").results)
    return BoardRun(output, times)


def verification(run: BoardRun, reference: np.ndarray, key: str, emulated: bool,
                 framework_ms: float | None = None) -> Verification:
    error = float(np.max(np.abs(run.output.astype("float64") - reference.astype("float64"))))
    top1 = bool(np.array_equal(run.output.reshape(run.output.shape[0], -1).argmax(-1),
                               reference.reshape(reference.shape[0], -1).argmax(-1)))
    timed = run.times_ms and not emulated
    return Verification(
        board=key, emulated=emulated, max_abs_error=error, top1_matches_framework=top1,
        latency_ms_median=float(np.median(run.times_ms)) if timed else None,
        latency_ms_p90=float(np.percentile(run.times_ms, 90)) if timed else None,
        framework_latency_ms_median=framework_ms)
