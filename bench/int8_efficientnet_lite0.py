"""EfficientNet-Lite0 int8, side by side in one run: our int8 artifact against our fp32 artifact,
ONNX Runtime's static int8 (QDQ, per-channel weights) and fp32, and OpenVINO f32 and bf16.

    python bench/int8_efficientnet_lite0.py [--fp32 artifacts/host/efficientnet-lite0-fp32]
        [--int8 artifacts/host/efficientnet-lite0-int8] [--crops 400] [--ort-method MinMax]
        [--ort-calibration N]

For each runtime: top-1 agreement with the fp32 PyTorch model and SQNR of the logits on each
evaluation set (pipeline.quantization.datasets.evaluation_sets drawn with seed 2: crops of the
calibration photos made as calibration makes them, then resized by scikit-image instead of
torch, through sensor noise and JPEG, and of photos calibration never saw; none of them seen
by calibration or the accuracy fallback, which draw with seeds 0 and 1), the worst of the sets,
median latency (batch 1, same thread count), and library size. Only artifacts that run on this
CPU. ONNX Runtime calibrates on as many crops (the same ones) as our int8 artifact did, unless
--ort-calibration says otherwise. OpenVINO (the `bench` extra) is left out where not installed.
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


def _openvino(path: str, threads: int, precision: str):
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                    "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def _scores(references: list[np.ndarray], outputs: list[np.ndarray]) -> list[tuple[float, float]]:
    """(top-1 agreement in %, SQNR in dB) per evaluation set."""
    from pipeline.artifact.manifest import DataInfo
    from pipeline.quantization.accuracy import compare

    scores = []
    for reference, output in zip(references, outputs, strict=True):
        report = compare(reference, output, None, DataInfo("bench", len(output), ""), 100.0)
        scores.append((100 * report.top1_agreement, report.sqnr_db))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path,
                        default=ROOT / "artifacts" / "host" / "efficientnet-lite0-fp32")
    parser.add_argument("--int8", type=Path,
                        default=ROOT / "artifacts" / "host" / "efficientnet-lite0-int8")
    # 600, not the 200 the target asks at least: on flat logits a few near-ties decide top-1,
    # and for the same artifact the first 200 crops gave 95.0%, the next 400 98.3%.
    parser.add_argument("--crops", type=int, default=400, help="inputs per evaluation set")
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
    from pipeline.quantization.datasets import CALIBRATION_SEED, builtin_crops, evaluation_sets

    ort_crops = args.ort_calibration or _calibration_count(args.int8)
    torch.set_num_threads(args.threads)
    model = load_model("efficientnet-lite0")
    sets = evaluation_sets("builtin", model.input_shape, args.crops, BENCH_SEED)
    with torch.no_grad():
        references = [np.concatenate([model.torch_module(torch.from_numpy(x[None])).numpy()
                                      for x in data.inputs]) for data in sets]
    x0 = sets[0].inputs[:1]
    rows: list[tuple[str, float, list, str]] = []  # name, median ms, scores per set, size

    def measure(label: str, predict, timed, size: str) -> None:
        outputs = [np.concatenate([predict(x[None]) for x in data.inputs]) for data in sets]
        rows.append((label, median_ms(timed, args.runs)[0], _scores(references, outputs), size))
        print(f"  measured {label}", flush=True)

    for label, artifact in (("tvm fp32", args.fp32), ("tvm int8", args.int8)):
        if not (artifact / "lib.so").is_file():
            print(f"(no {label} artifact at {artifact}: skipped)")
            continue
        predict, timed = _tvm_predict(artifact)
        measure(label, predict, timed(x0), f"{(artifact / 'lib.so').stat().st_size / 1e6:.2f} MB")
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
            measure(label, run, lambda run=run: run(x0), f"{os.path.getsize(path) / 1e6:.2f} MB")
        for precision in ("f32", "bf16"):
            run = _openvino(fp32_path, args.threads, precision)
            if run is None:
                print("(openvino is not installed: pip install -e .[bench])")
                break
            measure(f"openvino {precision}", run, lambda run=run: run(x0), "")
    print(f"EfficientNet-Lite0, batch 1, {args.threads} threads, median of {args.runs} runs; "
          f"top-1 agreement with PyTorch fp32 and SQNR on {args.crops} inputs per set "
          f"({os.cpu_count()} cores); ONNX Runtime calibrated on {ort_crops} crops")
    names = [data.spec.removeprefix("builtin").strip(" ()") or "crops" for data in sets]
    print(f"{'runtime':<34} {'median ms':>9} " + " ".join(f"{n:>15}" for n in names)
          + f" {'worst':>15}  size")
    for name, ms, scores, size in rows:
        cells = [f"{top1:5.1f}% {sqnr:5.1f} dB" for top1, sqnr in scores]
        worst = f"{min(t for t, _ in scores):5.1f}% {min(q for _, q in scores):5.1f} dB"
        print(f"{name:<34} {ms:>9.2f} " + " ".join(f"{c:>15}" for c in cells)
              + f" {worst:>15}  {size}")
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
