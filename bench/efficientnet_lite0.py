"""EfficientNet-Lite0 latency on this machine, side by side in one run: the tuned TVM artifact(s)
against ONNX Runtime and PyTorch eager, same thread count, batch 1, median of many runs.

    python bench/efficientnet_lite0.py [--artifact artifacts/host/efficientnet-lite0-fp32 ...]
                                       [--threads 2] [--runs 200]

Prints one line per runtime and the ratios to ONNX Runtime. Timings of artifacts for emulated
boards would be meaningless and are not taken: only artifacts that run on this CPU are timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACTS = [ROOT / "artifacts" / device / "efficientnet-lite0-fp32"
                     for device in ("host", "x86-nuc")]


def median_ms(run: Callable[[], object], runs: int, warmup: int = 20) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), float(np.percentile(times, 90))


def tvm_runner(artifact: Path, x: np.ndarray):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact / "lib.so")), tvm.cpu())
    inp = tvm.runtime.tensor(x)
    vm.set_input("main", inp)
    return lambda: vm.invoke_stateful("main"), lambda: vm["main"](inp).numpy()


def ort_runner(model, x: np.ndarray, threads: int, folder: str):
    import onnxruntime as ort
    import torch

    path = os.path.join(folder, "efficientnet-lite0.onnx")
    torch.onnx.export(model.torch_module, (torch.from_numpy(x),), path, input_names=["input"],
                      dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"input": x})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, action="append",
                        help="artifact folder(s) to time (default: host and x86-nuc, if built)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import torch

    from pipeline.artifact.manifest import read_manifest
    from pipeline.frontend.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model("efficientnet-lite0")
    x = model.sample_input()
    reference = model.reference_output(x)
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        ort_run = ort_runner(model, x, args.threads, folder)
        rows.append(("onnxruntime", *median_ms(ort_run, args.runs),
                     f"top-1 {int(np.argmax(ort_run()))}"))
    with torch.no_grad():
        module, inp = model.torch_module, torch.from_numpy(x)
        rows.append(("pytorch-eager", *median_ms(lambda: module(inp), args.runs),
                     f"top-1 {int(np.argmax(reference))}"))
    for artifact in args.artifact or [a for a in DEFAULT_ARTIFACTS if a.exists()]:
        manifest = read_manifest(artifact)
        timed, output = tvm_runner(artifact, x)
        got = output()
        error = float(np.max(np.abs(got - reference)))
        rows.append((f"tvm {manifest.device.name} ({manifest.tuning.trials} trials, "
                     f"{manifest.device.target['mcpu']})", *median_ms(timed, args.runs),
                     f"top-1 {int(np.argmax(got))}, max abs err {error:.1e}"))
    ort_ms = rows[0][1]
    print(f"EfficientNet-Lite0, batch 1, {args.threads} threads, median of {args.runs} runs "
          f"({os.uname().machine}, {os.cpu_count()} cores)")
    print(f"{'runtime':<48} {'median ms':>10} {'p90 ms':>8} {'x ORT':>7}  notes")
    for name, median, p90, note in rows:
        print(f"{name:<48} {median:>10.2f} {p90:>8.2f} {median / ort_ms:>7.2f}  {note}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
