"""The classic CNN architectures of issue 16 by every route, in one run: does each build for this
machine's `host` class with no tuning, does it match its framework, and how does the untuned
library compare with ONNX Runtime on the same file.

    python bench/model_coverage.py [--threads 2] [--runs 50]

Routes: `torch` (torch.export), `onnx9` (opset 9 as old zoo files were written: weights as graph
inputs, two-output Dropout, variadic Sum, Upsample, LRN) and `onnx20` (the newest opset the
TorchScript exporter writes, with its shape arithmetic). The architectures are the small seeded
ones of tests/classic_cnns.py (32x32 inputs), so latencies are microseconds and say more about
per-operator overhead than about convolution speed. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import onnxruntime as ort
    import tvm
    from tvm import relax

    from pipeline.base.devices import load_device
    from pipeline.compile.layout import convert_layout
    from pipeline.compile.lowering import lower
    from pipeline.frontend.importer import import_model
    from pipeline.frontend.models import _from_torch, load_model
    from tests import classic_cnns

    target = load_device("host").tvm_target()
    print(f"host target {target.attrs['mcpu']}, {args.threads} threads, median of {args.runs}\n")
    print("| architecture | route | builds | max abs error vs framework | output std | "
          "NHWC transposes | TVM untuned ms | ONNX Runtime ms |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in sorted(classic_cnns.ARCHITECTURES):
            for route in ("torch", "onnx9", "onnx20"):
                if route == "torch":
                    model = _from_torch(name, "torch", name, classic_cnns.build(name),
                                        classic_cnns.INPUT_SHAPE)
                else:
                    path = classic_cnns.export_onnx(name, Path(folder) / f"{name}-{route}.onnx",
                                                    int(route.removeprefix("onnx")))
                    model = load_model(str(path))
                x = classic_cnns.random_input(seed=7)  # not a seed the tests compare on
                try:
                    mod = import_model(model).mod
                    with target:
                        _, layout = convert_layout(mod)
                    vm = relax.VirtualMachine(tvm.compile(lower(mod, target), target=target),
                                              tvm.cpu())
                except Exception as err:  # a row per failure, not a stopped table
                    print(f"| {name} | {route} | NO: {type(err).__name__} | | | | | |")
                    continue
                inp = tvm.runtime.tensor(x)
                got = vm["main"](inp).numpy()
                expected = model.reference_output(x)
                tvm_ms = _median_ms(lambda vm=vm, inp=inp: vm["main"](inp), args.runs)
                ort_ms = ""
                if model.onnx_path is not None:
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = args.threads
                    options.log_severity_level = 3
                    session = ort.InferenceSession(str(model.onnx_path), options,
                                                   providers=["CPUExecutionProvider"])
                    feed = {model.input_name: x}
                    ort = _median_ms(lambda s=session, f=feed: s.run(None, f), args.runs)
                    ort_ms = f"{ort:.3f}"
                print(f"| {name} | {route} | yes | {np.abs(got - expected).max():.1e} | "
                      f"{expected.std():.3f} | {layout.transposes_added} | {tvm_ms:.3f} | "
                      f"{ort_ms} |", flush=True)


def _median_ms(run, runs: int) -> float:
    from efficientnet_lite0 import median_ms  # this folder is the script's: on sys.path

    return median_ms(run, runs, warmup=5)[0]


if __name__ == "__main__":
    main()
