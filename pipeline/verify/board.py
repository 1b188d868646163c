"""The verify stage: run the built library on a board of its class and check its output
against the framework's (fp32) or the same quantized model compiled here (int8, fp16)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.artifact.manifest import Verification
from pipeline.base.devices import DeviceConfig
from pipeline.farm.boards import BoardRun, run_on_board
from pipeline.farm.tracker import TrackerAddress, wait_for_boards
from pipeline.frontend.models import LoadedModel
from pipeline.quantization.stage import Quantized

log = logging.getLogger(__name__)


def verify_on_board(lib: Path, model: LoadedModel, quantized: Quantized, device: DeviceConfig,
                    address: TrackerAddress) -> Verification:
    """The board's output against the framework's (fp32), or against the same quantized model
    compiled for this machine (int8, fp16: the framework has no such model)."""
    x = model.sample_input()
    if quantized.reference is None:
        reference, against = model.reference_output(x), "the framework"
        second = model.reference_output(model.sample_input(seed=1))
    else:
        reference = quantized.reference(x)
        against = f"the {quantized.variant.value} model on this machine"
        second = quantized.reference(model.sample_input(seed=1))
    degenerate = degenerate_output(reference, second)
    if degenerate:
        log.warning(f"the model's output {degenerate}: agreeing with {against} proves little. "
                    f"Check that the file holds trained weights.")
    log.info(f"verifying on a '{device.rpc_key}' board via {address} against {against}")
    wait_for_boards(address, device.rpc_key)
    run = run_on_board(lib, address, device.rpc_key, x)
    checked = verification(run, reference, degenerate)
    log.info(f"  ran on board {run.board.name}"
             + (f" (timing {run.board.modeled})" if run.board.modeled
                else " (emulated: not timed)" if run.board.emulated else ""))
    allowed = quantized.variant.tolerance(reference)
    if not checked.max_abs_error <= allowed:
        raise RuntimeError(f"the compiled {model.name} differs from {against} by "
                           f"{checked.max_abs_error:.3g} (tolerance {allowed:.3g}): a compiler "
                           f"bug, not packaged")
    return checked


def degenerate_output(reference: np.ndarray, other: np.ndarray) -> str | None:
    """Why an output says little about correctness: every value the same (a uniform softmax,
    a constant), or the same output for two different inputs."""
    spread = float(np.ptp(reference)) if reference.size else 0.0
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-30)
    if spread <= 1e-6 * scale:
        return f"is uniform (every value {float(reference.flat[0]):.4g})"
    if reference.shape == other.shape and np.allclose(reference, other, rtol=1e-6, atol=0):
        return "does not depend on the input (two different inputs give the same output)"
    return None


def verification(run: BoardRun, reference: np.ndarray,
                 degenerate: str | None = None) -> Verification:
    error = float(np.max(np.abs(run.output.astype("float64") - reference.astype("float64"))))
    top1 = bool(np.array_equal(run.output.reshape(run.output.shape[0], -1).argmax(-1),
                               reference.reshape(reference.shape[0], -1).argmax(-1)))
    timing = run.board.timing if run.blocks_ms else None
    quietest = run.quietest_ms
    return Verification(
        board=run.board.name, emulated=run.board.emulated, max_abs_error=error,
        top1_matches_framework=top1,
        latency_ms_median=float(np.median(quietest)) if timing else None,
        latency_ms_p90=float(np.percentile(quietest, 90)) if timing else None,
        threads=run.board.threads, reference_degenerate=degenerate, timing=timing,
        measurement=measurement(run) if timing else None)


def measurement(run: BoardRun) -> str:
    """How the latency was taken, in words, for the manifest."""
    threads = f", {run.board.threads} threads" if run.board.threads else ""
    if len(run.blocks_ms) == 1:
        return (f"median of {len(run.blocks_ms[0])} runs after {run.warmup} warm-up "
                f"run(s){threads}")
    medians = "/".join(f"{np.median(block):.2f}" for block in run.blocks_ms)
    return (f"median and p90 of the quietest of {len(run.blocks_ms)} blocks of "
            f"{len(run.blocks_ms[0])} runs, back to back in one process after {run.warmup} "
            f"warm-up runs{threads} (block medians {medians} ms)")
