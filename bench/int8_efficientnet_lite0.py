"""EfficientNet-Lite0 int8, side by side in one run: our int8 artifact against our fp32 artifact,
and ONNX Runtime's static int8 (QDQ, per-channel weights) against ONNX Runtime fp32.

    python bench/int8_efficientnet_lite0.py [--fp32 artifacts/host/efficientnet-lite0-fp32]
        [--int8 artifacts/host/efficientnet-lite0-int8] [--crops 600] [--ort-method MinMax]
        [--ort-calibration N]

For each runtime: top-1 agreement with the fp32 PyTorch model on random crops of scikit-image's
photos (other crops than those of calibration and of the accuracy fallback), top-5 overlap,
SQNR of the logits, median latency (batch 1, same thread count), and library size. Only
artifacts that run on this CPU. ONNX Runtime calibrates on as many crops (the same ones) as our
int8 artifact did, unless --ort-calibration says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Crops that neither calibration (seed 0) nor the pipeline's accuracy fallback (seed 1) saw.
BENCH_SEED = 2


def _tvm_predict(artifact: Path):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact / "lib.so")), tvm.cpu())

    def predict(x: np.ndarray) -> np.ndarray:
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    def timed_factory(x: np.ndarray):
        vm.set_input("main", tvm.runtime.tensor(x))
        return lambda: vm.invoke_stateful("main")

    return predict, timed_factory


def _calibration_count(int8_artifact: Path) -> int:
    from pipeline.artifact.manifest import read_manifest

    if not (int8_artifact / "manifest.json").is_file():
        return 64
    quantization = read_manifest(int8_artifact).quantization
    return quantization.calibration.count if quantization and quantization.calibration else 64


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def _ort_int8(fp32_path: str, int8_path: str, calibration: np.ndarray, method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[None]} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    prepared = fp32_path.replace(".onnx", "-prep.onnx")
    quant_pre_process(fp32_path, prepared)
    quantize_static(prepared, int8_path, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))


def _scores(reference: np.ndarray, outputs: np.ndarray) -> str:
    from pipeline.artifact.manifest import DataInfo
    from pipeline.quantization.accuracy import compare

    report = compare(reference, outputs, None, DataInfo("bench", len(outputs), ""), 100.0)
    return (f"{100 * report.top1_agreement:5.1f}% {100 * report.top5_overlap:5.1f}% "
            f"{report.sqnr_db:6.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path,
                        default=ROOT / "artifacts" / "host" / "efficientnet-lite0-fp32")
    parser.add_argument("--int8", type=Path,
                        default=ROOT / "artifacts" / "host" / "efficientnet-lite0-int8")
    # 600, not the 200 the target asks at least: on flat logits a few near-ties decide top-1,
    # and for the same artifact the first 200 crops gave 95.0%, the next 400 98.3%.
    parser.add_argument("--crops", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--ort-method", default="MinMax",
                        choices=["MinMax", "Percentile", "Entropy"])
    parser.add_argument("--ort-calibration", type=int, metavar="N",
                        help="crops ONNX Runtime calibrates on (default: as many as the int8 "
                             "artifact's manifest records, else 64)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import torch

    sys.path.insert(0, str(ROOT))
    from bench.efficientnet_lite0 import median_ms
    from pipeline.frontend.models import load_model
    from pipeline.quantization.datasets import CALIBRATION_SEED, builtin_crops

    ort_crops = args.ort_calibration or _calibration_count(args.int8)
    torch.set_num_threads(args.threads)
    model = load_model("efficientnet-lite0")
    crops = builtin_crops(model.input_shape, args.crops, BENCH_SEED)
    with torch.no_grad():
        reference = np.concatenate([model.torch_module(torch.from_numpy(x[None])).numpy()
                                    for x in crops])
    x0 = crops[:1]
    rows: list[tuple[str, float, str, str]] = []  # name, median ms, accuracy, size
    for label, artifact in (("tvm fp32", args.fp32), ("tvm int8", args.int8)):
        if not (artifact / "lib.so").is_file():
            print(f"(no {label} artifact at {artifact}: skipped)")
            continue
        predict, timed = _tvm_predict(artifact)
        outputs = np.concatenate([predict(x[None]) for x in crops])
        size = (artifact / "lib.so").stat().st_size
        rows.append((label, median_ms(timed(x0), args.runs)[0], _scores(reference, outputs),
                     f"{size / 1e6:.2f} MB"))
    with tempfile.TemporaryDirectory() as folder:
        fp32_path, int8_path = f"{folder}/fp32.onnx", f"{folder}/int8.onnx"
        torch.onnx.export(model.torch_module, (torch.from_numpy(x0),), fp32_path,
                          input_names=["input"], dynamo=False, opset_version=17)
        _ort_int8(fp32_path, int8_path,
                  builtin_crops(model.input_shape, ort_crops, CALIBRATION_SEED),
                  args.ort_method)
        for label, path in (("onnxruntime fp32", fp32_path),
                            (f"onnxruntime int8 QDQ ({args.ort_method})", int8_path)):
            run = _ort_session(path, args.threads)
            outputs = np.concatenate([run(x[None]) for x in crops])
            rows.append((label, median_ms(lambda run=run: run(x0), args.runs)[0],
                         _scores(reference, outputs), f"{os.path.getsize(path) / 1e6:.2f} MB"))
    print(f"EfficientNet-Lite0, batch 1, {args.threads} threads, median of {args.runs} runs; "
          f"accuracy against PyTorch fp32 on {args.crops} crops ({os.cpu_count()} cores); "
          f"ONNX Runtime calibrated on {ort_crops} crops")
    print(f"{'runtime':<34} {'median ms':>9} {'top-1':>6} {'top-5':>6} {'SQNR':>6}  size")
    for name, ms, scores, size in rows:
        print(f"{name:<34} {ms:>9.2f} {scores}  {size}")
    by_name = {name: ms for name, ms, _, _ in rows}
    if "tvm fp32" in by_name and "tvm int8" in by_name:
        sizes = [(a / "lib.so").stat().st_size for a in (args.int8, args.fp32)]
        print(f"tvm int8 vs tvm fp32: {by_name['tvm fp32'] / by_name['tvm int8']:.2f}x faster, "
              f"library {sizes[0] / sizes[1]:.2f}x the size")
    ort = [ms for name, ms, _, _ in rows if name.startswith("onnxruntime")]
    print(f"onnxruntime int8 vs onnxruntime fp32: {ort[0] / ort[1]:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
