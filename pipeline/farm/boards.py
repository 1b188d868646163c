"""Running a library on a board of the farm through the tracker: which board answered,
whether it is emulated (or modeled), its output and its timings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.base.errors import UserError
from pipeline.farm.tracker import TrackerAddress

WARMUP_RUNS = 10
# A shared machine has slow stretches of seconds: timed runs go in blocks run back to back, and
# the latency is the quietest block's. Blocks whose medians differ by more than OUTLIER_SPREAD
# mean one fell in such a stretch, so that many blocks again are timed.
BLOCKS, OUTLIER_SPREAD = 3, 1.2
# A modeled board's figure is the same on every run: a few runs show it, each costs seconds.
MODELED_WARMUP_RUNS, MODELED_REPEATS = 1, 3


@dataclass(frozen=True)
class BoardInfo:
    name: str
    emulated: bool  # its wall-clock timings are not performance figures
    threads: int | None = None  # TVM's worker threads there (None: a server not of our farm)
    modeled: str | None = None  # its timings come from a timing model, labelled so

    @property
    def timing(self) -> str | None:
        """What its timings are: 'measured', the model's label, or None (not timed)."""
        if self.modeled:
            return self.modeled
        return None if self.emulated else "measured"


@dataclass(frozen=True)
class BoardRun:
    output: np.ndarray
    blocks_ms: tuple[tuple[float, ...], ...]  # timed runs in blocks, in order; () not timed
    board: BoardInfo
    warmup: int = 0  # untimed runs before the first block

    @property
    def times_ms(self) -> tuple[float, ...]:
        return tuple(t for block in self.blocks_ms for t in block)

    @property
    def quietest_ms(self) -> tuple[float, ...]:
        """The block with the lowest median: what the library takes when nothing else runs."""
        return min(self.blocks_ms, key=lambda block: float(np.median(block)), default=())


def board_info(tracker: TrackerAddress, key: str, timeout_s: int = 120) -> BoardInfo:
    """Which board of `key` answers, and whether it is emulated."""
    return _describe(_request(tracker, key, timeout_s), key)


def run_on_board(lib: Path, tracker: TrackerAddress, key: str, x: np.ndarray,
                 repeats: int = 30, timeout_s: int = 600) -> BoardRun:
    """Upload `lib` to a free board of `key`, run `main(x)`, and time `repeats` runs in BLOCKS
    blocks, more where they disagree (not on an emulated board, whose timings mean nothing; one
    block of a few runs on a modeled one, whose figure never varies)."""
    import tvm
    from tvm import relax

    remote = _request(tracker, key, timeout_s)
    board = _describe(remote, key)
    warmup = WARMUP_RUNS
    if board.modeled:
        warmup, repeats = MODELED_WARMUP_RUNS, min(repeats, MODELED_REPEATS)
    elif board.emulated:
        repeats = 0
    remote.upload(str(lib))
    module = remote.load_module(lib.name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(module, dev)
    inp = tvm.runtime.tensor(x, dev)
    output = vm["main"](inp).numpy()
    if not repeats:
        return BoardRun(output, (), board)
    vm.set_input("main", inp)
    # Warmed up first, as a user's application is after its first calls (thread pool
    # started, caches and pages warm): those first runs are not what users wait for.
    vm.time_evaluator("invoke_stateful", dev, number=warmup, repeat=1)("main")
    blocks = 1 if board.modeled else BLOCKS
    timer = vm.time_evaluator("invoke_stateful", dev, number=1,
                              repeat=max(1, repeats // blocks), min_repeat_ms=0)

    def timed(count: int) -> list[tuple[float, ...]]:
        return [tuple(float(t) * 1e3 for t in timer("main").results) for _ in range(count)]

    timings = timed(blocks)
    if blocks > 1 and _spread(timings) > OUTLIER_SPREAD:
        timings += timed(blocks)
    return BoardRun(output, tuple(timings), board, warmup)


def _spread(blocks: list[tuple[float, ...]]) -> float:
    medians = [float(np.median(block)) for block in blocks]
    return max(medians) / min(medians)


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
    threads, modeled = info.get("threads"), info.get("modeled")
    return BoardInfo(str(info.get("name", key)), bool(info.get("emulated", False)),
                     threads if isinstance(threads, int) else None,
                     modeled if isinstance(modeled, str) and modeled else None)
