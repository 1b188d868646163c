"""Models nobody has tuned, on this machine, side by side in one run: TVM untuned, TVM with
schedules transferred from the class's committed logs (no tuning), and ONNX Runtime.

    python bench/transfer.py [--models mobilenet-v2,resnet-18,FILE.onnx]
                             [--device host] [--runs 100] [--own-process]

Each model is built with `pipeline.build` (no tuning; verified on a board of the class) from a
copy of the committed logs with the model's own set aside (leave-one-out): with --no-transfer,
and with transfer from the other models' logs of the class. A model with logs of its own is
also built from them, the `tuned` column next to its transferred one. ONNX Runtime runs the
faster of the plain and the simplified torch.onnx export (for an .onnx model: the file itself
and its simplification; bench/unseen_onnx.py writes some the project has never seen), with as
many threads as the artifacts were verified with. Prints per model the latencies, the ratios to
ONNX Runtime and how many kernels were transferred; with --own-process each runtime is also
timed alone in a process of its own (interleaved, ONNX Runtime's spinning worker threads take
CPU from whichever runs next).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUND_S = 5.0  # at most about this long per runtime and round, at least 3 runs
ALONE = """
import statistics, sys, time, numpy as np
kind, path, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
x = np.load(sys.argv[5])
if kind == "tvm":
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    vm.set_input("main", tvm.runtime.tensor(x))
    run = lambda: vm.invoke_stateful("main")
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda: session.run(None, {name: x})
start = time.perf_counter(); run(); once = time.perf_counter() - start
runs = max(5, min(200, int(seconds / max(once, 1e-6))))
for _ in range(min(10, runs)):
    run()
times = []
for _ in range(runs):
    start = time.perf_counter(); run(); times.append((time.perf_counter() - start) * 1e3)
print(statistics.median(times))
"""


def _alone(kind: str, path: Path | str, threads: int, x_file: Path) -> float:
    """Median ms of one runtime timed alone in a fresh process (TVM with `threads` threads)."""
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", ALONE, kind, str(path), str(threads),
                           str(3 * ROUND_S), str(x_file)], capture_output=True, text=True,
                          check=True, env=env)
    return float(done.stdout.split()[-1])


def _logs_without(model: str, scratch: Path) -> tuple[Path, bool]:
    """A copy of the committed logs with every folder of `model` set aside, and whether there
    was one."""
    copy = scratch / f"logs-without-{model}"
    shutil.copytree(ROOT / "tuning_logs", copy, ignore=shutil.ignore_patterns(".lock"))
    own = list(copy.glob(f"*/{model}-*"))
    for folder in own:
        shutil.rmtree(folder)
    return copy, bool(own)


def _build(device: str, model: str, logs: Path, out: Path, transfer: bool) -> float:
    from pipeline.build import main as build

    start = time.monotonic()
    argv = ["--device", device, "--model", model, "--logs", str(logs), "--out", str(out)]
    if build(argv + ([] if transfer else ["--no-transfer"])) != 0:
        raise SystemExit(f"building {model} for {device} failed")
    return time.monotonic() - start


def _cells(figures: dict[str, float], ort: float) -> str:
    """Latencies (untuned, transferred, tuned where built, ORT), then each over ORT."""
    labels = ("untuned", "transferred", "tuned")
    ms = " ".join(f"{figures[k]:9.2f}" if k in figures else f"{'-':>9s}" for k in labels)
    ratios = " ".join(f"{figures[k] / ort:11.2f}x" if k in figures else f"{'-':>12s}"
                      for k in labels)
    return f"{ms} {ort:8.2f} {ratios}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet-v2,resnet-18")
    parser.add_argument("--device", default="host")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--own-process", action="store_true",
                        help="also time each runtime alone in a process of its own")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from efficientnet_lite0 import export_onnx, median_ms, ort_runner, tvm_runner

    from pipeline.artifact.manifest import read_manifest
    from pipeline.frontend.models import load_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as scratch_name:
        scratch = Path(scratch_name)
        for name in args.models.split(","):
            model = load_model(name)
            x = model.sample_input()
            logs, has_own = _logs_without(model.name, scratch)
            builds = [("untuned", logs, False), ("transferred", logs, True)]
            if has_own:
                builds.append(("tuned", ROOT / "tuning_logs", True))
            built = {}
            for label, label_logs, transfer in builds:
                out = scratch / f"{model.name}-{label}"
                seconds = _build(args.device, name, label_logs, out, transfer)
                built[label] = (out, read_manifest(out), seconds)
            # Another class's logs of this model (x86-avx512's for an x86-nuc build) are not its
            # own: only a build with kernels from the device's own logs of the model is "tuned".
            if "tuned" in built and "tuned" not in built["tuned"][1].tuning.kernels.values():
                del built["tuned"]
            threads = built["transferred"][1].verification.threads or 1
            plain, lean = export_onnx(model, x, scratch_name)
            timings = {}
            # Interleaved, one round after another, so that a noisy spell hits every runtime.
            runners = {label: tvm_runner(out, x)[0] for label, (out, _, _) in built.items()}
            runners["ort"] = ort_runner(plain, x, threads)
            runners["ort-simplified"] = ort_runner(lean, x, threads)
            for _ in range(3):
                for label, run in runners.items():
                    start = time.perf_counter()
                    run()  # an untuned build takes seconds a run: time it fewer times
                    once = time.perf_counter() - start
                    runs = max(3, min(args.runs // 3, int(ROUND_S / max(once, 1e-6))))
                    median, _ = median_ms(run, runs, warmup=min(5, runs))
                    timings[label] = min(timings.get(label, float("inf")), median)
            ort = min(timings["ort"], timings["ort-simplified"])
            alone = None
            if args.own_process:
                runners.clear()  # no thread pool of this process competes
                np.save(scratch / "x.npy", x)
                alone = {label: _alone("tvm", out / "lib.so", threads, scratch / "x.npy")
                         for label, (out, _, _) in built.items()}
                alone["ort"] = min(_alone("ort", path, threads, scratch / "x.npy")
                                   for path in (plain, lean))
            kernels = built["transferred"][1].tuning.kernels
            moved = sum(1 for k in kernels.values() if k.startswith("transferred"))
            rows.append((model.name, threads, timings, ort, moved, len(kernels),
                         built["transferred"][2], alone))
    print(f"\n{args.device}, each model's own logs set aside (best of 3 interleaved medians, ms;"
          f" tuned: built from its own committed logs)")
    print(f"{'model':18s} {'thr':>3s} {'untuned':>9s} {'transfer':>9s} {'tuned':>9s} {'ORT':>8s} "
          f"{'untuned/ORT':>12s} {'transfer/ORT':>12s} {'tuned/ORT':>12s} {'kernels':>9s} "
          f"{'build s':>8s}")
    for name, threads, timings, ort, moved, total, seconds, alone in rows:
        print(f"{name:18s} {threads:3d} {_cells(timings, ort)} {moved:4d}/{total:<4d} "
              f"{seconds:8.0f}")
        if alone:
            print(f"{'  alone':18s} {threads:3d} {_cells(alone, alone['ort'])}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
