"""Run a built library on a board through the tracker: outputs against the framework, timing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifact import Verification
from pipeline.errors import UserError
from rpc.tracker import TrackerAddress


@dataclass(frozen=True)
class BoardInfo:
    name: str
    emulated: bool  # its timings are not performance figures


@dataclass(frozen=True)
class BoardRun:
    output: np.ndarray
    times_ms: tuple[float, ...]  # one entry per repeat, empty when not timed
    board: BoardInfo


def board_info(tracker: TrackerAddress, key: str, timeout_s: int = 120) -> BoardInfo:
    """Which board of `key` answers, and whether it is emulated."""
    return _describe(_request(tracker, key, timeout_s), key)


def run_on_board(lib: Path, tracker: TrackerAddress, key: str, x: np.ndarray,
                 repeats: int = 30, timeout_s: int = 600) -> BoardRun:
    """Upload `lib` to a free board of `key`, run `main(x)`, and time `repeats` runs (not on
    an emulated board, whose timings mean nothing)."""
    import tvm
    from tvm import relax

    remote = _request(tracker, key, timeout_s)
    board = _describe(remote, key)
    repeats = 0 if board.emulated else repeats
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
    return BoardRun(output, times, board)


def _request(tracker: TrackerAddress, key: str, timeout_s: int):
    from tvm import rpc

    try:
        return rpc.connect_tracker(tracker.host, tracker.port).request(
            key, priority=1, session_timeout=timeout_s)
    except (OSError, RuntimeError, TimeoutError) as err:
        raise UserError(f"Could not get a '{key}' board from the tracker at {tracker} ({err}). "
                        f"python -m tvm.exec.query_rpc_tracker --host {tracker.host} --port "
                        f"{tracker.port} lists the boards.") from None


def _describe(remote, key: str) -> BoardInfo:
    """Boards started by our farm answer `edge_tvm.board_info`; any other TVM RPC server is
    taken for a real board of its key."""
    try:
        info = json.loads(remote.get_function("edge_tvm.board_info")())
    except (AttributeError, RuntimeError, ValueError):
        return BoardInfo(key, emulated=False)
    return BoardInfo(str(info.get("name", key)), bool(info.get("emulated", False)))


# Relative to the output's largest magnitude. fp32: float rounding only. int8 and fp16 are
# checked against the same quantized model compiled for this machine: a float epilogue rounded
# differently (FMA contraction) may move one int8 value by a step, which carries through.
RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 2e-2}


def tolerance(reference: np.ndarray, variant: str = "fp32") -> float:
    """How far a compiled model's output may be from its reference on the same input."""
    return RELATIVE_TOLERANCE[variant] * float(np.max(np.abs(reference))) + 1e-4


def verification(run: BoardRun, reference: np.ndarray) -> Verification:
    error = float(np.max(np.abs(run.output.astype("float64") - reference.astype("float64"))))
    top1 = bool(np.array_equal(run.output.reshape(run.output.shape[0], -1).argmax(-1),
                               reference.reshape(reference.shape[0], -1).argmax(-1)))
    timed = bool(run.times_ms) and not run.board.emulated
    return Verification(
        board=run.board.name, emulated=run.board.emulated, max_abs_error=error,
        top1_matches_framework=top1,
        latency_ms_median=float(np.median(run.times_ms)) if timed else None,
        latency_ms_p90=float(np.percentile(run.times_ms, 90)) if timed else None)
