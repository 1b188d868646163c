"""EfficientNet-Lite0 latency on this machine, side by side in one run: the tuned TVM artifact(s)
against ONNX Runtime, OpenVINO (f32) and PyTorch eager, same thread count, batch 1, median of
many runs.

    python bench/efficientnet_lite0.py [--artifact artifacts/host/efficientnet-lite0-fp32 ...]
                                       [--threads N] [--runs 200] [--own-process]

ONNX Runtime gets two exports: torch.onnx's as it is, and the same simplified with onnxsim
(TF-style padding folded into the convolutions), the faster of which is the peer figure.
OpenVINO (pip install -e ".[bench]") reads the simplified export. Prints one line per runtime
and the ratios to the fastest ONNX Runtime; with --own-process every runtime is also timed
alone in a process of its own (a shared machine's noise then hits one runtime at a time, and
the interleaved figures show what each run had). Timings of artifacts for emulated boards would
be meaningless and are not taken: only artifacts that run on this CPU are timed.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
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


def export_onnx(model, x: np.ndarray, folder: str) -> tuple[str, str]:
    """torch.onnx's export (an ONNX model's own file), and the same simplified for this input
    shape (onnxsim)."""
    import onnx
    import onnxsim

    if model.torch_module is None:
        plain = str(model.onnx_path)
    else:
        import torch

        plain = os.path.join(folder, f"{model.name}.onnx")
        torch.onnx.export(model.torch_module, (torch.from_numpy(x),), plain,
                          input_names=["input"], dynamo=False, opset_version=17)
    simplified, ok = onnxsim.simplify(onnx.load(plain))
    assert ok, "onnxsim could not check its simplification"
    lean = os.path.join(folder, f"{model.name}-simplified.onnx")
    onnx.save(simplified, lean)
    return plain, lean


def ort_runner(path: str, x: np.ndarray, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_runner(path: str, x: np.ndarray, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})[compiled.output(0)]


def verified_threads(manifests) -> int:
    """The one thread count the artifacts were verified with (2 when none says)."""
    counts = {m.verification.threads for m in manifests
              if m.verification is not None and m.verification.threads}
    if len(counts) > 1:
        sys.exit(f"the artifacts were verified with different thread counts {sorted(counts)}: "
                 f"give --threads, or bench them apart")
    return counts.pop() if counts else 2


def _own_process(runtime: str, argv_tail: list[str]) -> tuple[float, float]:
    """Median and p90 of `runtime` timed alone in a fresh process."""
    done = subprocess.run([sys.executable, __file__, "--only", runtime, *argv_tail],
                          capture_output=True, text=True, check=True)
    median, p90 = done.stdout.split()[-2:]
    return float(median), float(p90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, action="append",
                        help="artifact folder(s) to time (default: host and x86-nuc, if built)")
    parser.add_argument("--threads", type=int,
                        help="threads for every runtime (default: those the artifacts were "
                             "verified with on their board, as their manifests record)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--own-process", action="store_true",
                        help="also time each runtime alone in a process of its own")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one runtime, for --own-process
    args = parser.parse_args(argv)
    from pipeline.artifact.manifest import read_manifest

    artifacts = args.artifact or [a for a in DEFAULT_ARTIFACTS if a.exists()]
    if args.threads is None:
        args.threads = verified_threads([read_manifest(a) for a in artifacts])
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

    import torch

    from pipeline.frontend.models import load_model

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)  # inference only, in every runner below
    model = load_model("efficientnet-lite0")
    x = model.sample_input()
    reference = model.reference_output(x)
    exports = tempfile.TemporaryDirectory(prefix="bench-onnx-")  # removed when it is collected
    plain, lean = export_onnx(model, x, exports.name)

    def same(run):
        return run, run

    factories: dict[str, Callable[[], tuple[Callable[[], object], Callable[[], np.ndarray]]]] = {
        "onnxruntime": lambda: same(ort_runner(plain, x, args.threads)),
        "onnxruntime (onnxsim export)": lambda: same(ort_runner(lean, x, args.threads))}
    if openvino_available():
        factories["openvino f32"] = lambda: same(openvino_runner(lean, x, args.threads))
    module, inp = model.torch_module, torch.from_numpy(x)
    factories["pytorch-eager"] = lambda: (lambda: module(inp), lambda: module(inp).numpy())
    for artifact in artifacts:
        manifest = read_manifest(artifact)
        name = (f"tvm {manifest.device.name} {manifest.variant} ({manifest.tuning.trials} trials, "
                f"{manifest.device.target['mcpu']})")
        factories[name] = functools.partial(tvm_runner, artifact, x)
    if args.only is not None:  # this runtime alone: no other runtime's threads in the process
        print(*median_ms(factories[args.only]()[0], args.runs))
        return 0
    runners = {name: factory() for name, factory in factories.items()}

    rows = []
    for name, (timed, output) in runners.items():
        got = output()
        own = ""
        if args.own_process:
            tail = ["--threads", str(args.threads), "--runs", str(args.runs)]
            tail += [a for artifact in artifacts for a in ("--artifact", str(artifact))]
            own = f"{_own_process(name, tail)[0]:.2f}"
        rows.append((name, *median_ms(timed, args.runs), own,
                     f"top-1 {int(np.argmax(got))}, max abs err "
                     f"{float(np.max(np.abs(got - reference))):.1e}"))
    ort_ms = min(r[1] for r in rows if r[0].startswith("onnxruntime"))
    print(f"EfficientNet-Lite0, batch 1, {args.threads} threads, median of {args.runs} runs "
          f"({os.uname().machine}, {os.cpu_count()} cores)")
    print(f"{'runtime':<48} {'median ms':>10} {'p90 ms':>8} {'x ORT':>7} {'alone ms':>9}  notes")
    for name, median, p90, own, note in rows:
        print(f"{name:<48} {median:>10.2f} {p90:>8.2f} {median / ort_ms:>7.2f} {own:>9}  {note}")
    print("x ORT: against the faster ONNX Runtime export, both timed interleaved in this run")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
