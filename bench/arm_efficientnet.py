"""ARM classes under the timing model, side by side in one run: our arm-a53 / rpi4 artifacts
against ONNX Runtime's aarch64 wheel (MLAS NEON kernels), fp32 and int8, on EfficientNet-Lite0
(or another zoo model), each on a modeled board of the class (rpc/timing_model.c, one core).

    python bench/arm_efficientnet.py [--device arm-a53 --device rpi4] [--model efficientnet-lite0]
                                     [--artifact artifacts/arm-a53/efficientnet-lite0-fp32 ...]

Every runtime runs in its own modeled board process (bench/modeled_run.py): one uncounted run,
then the counted one, caches emptied first; the model gives the same figure every time, so
one repeat suffices. ONNX Runtime's wheel is installed into the boards' root filesystem on first
use. Its int8 model is ONNX Runtime's own static QDQ quantization (per channel), calibrated on
the pipeline's builtin crops. Figures are modeled, labelled with the model's version; they are
never compared with measured ones. Prints one line per runtime, its ratio to ONNX Runtime fp32
on the same board, and top-1 (the same label as the fp32 framework output, on a sample crop).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PEER_PACKAGES = ("onnxruntime==1.31.1",)


def ort_int8(fp32_path: str, model, folder: str) -> str:
    """ONNX Runtime's static QDQ int8 (per-channel weights), calibrated on builtin crops."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from pipeline.quantization.datasets import CALIBRATION_SEED, load_dataset

    data = load_dataset("builtin", model.input_shape, 64, CALIBRATION_SEED).inputs

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"input": x[None]} for x in data)

        def get_next(self):
            return next(self.items, None)

    out = os.path.join(folder, f"{model.name}-int8-qdq.onnx")
    quantize_static(fp32_path, out, Crops(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def modeled_run(device, runtime: str, model_path: str, x_path: str) -> dict:
    from pipeline.farm import modeled

    python = modeled.require_ready(device)
    done = subprocess.run([str(python), str(ROOT / "bench" / "modeled_run.py"), runtime,
                           model_path, x_path, "--repeats", "1"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TVM_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{runtime} on a modeled {device.name} board failed:\n"
                         f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="arm-a53 and/or rpi4 (default both)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--artifact", action="append", type=Path, default=[],
                        help="our artifacts to time (default: artifacts/<device>/<model>-fp32 "
                             "and -int8 where built)")
    args = parser.parse_args(argv)

    from efficientnet_lite0 import export_onnx

    from pipeline.artifact.manifest import read_manifest
    from pipeline.base.devices import load_device
    from pipeline.farm import modeled
    from pipeline.frontend.models import load_model

    model = load_model(args.model)
    x = model.sample_input()
    expected = int(np.argmax(model.reference_output(x)))
    from pipeline.farm.emulated import add_board_packages

    add_board_packages(PEER_PACKAGES)
    with tempfile.TemporaryDirectory() as folder:
        x_path = os.path.join(folder, "x.npy")
        np.save(x_path, x)
        _, fp32 = export_onnx(model, x, folder)
        int8 = ort_int8(fp32, model, folder)
        for name in args.device or ["arm-a53", "rpi4"]:
            device = load_device(name)
            print(f"{device.name}: {modeled.label(device)}, one core at "
                  f"{device.timing_model.freq_mhz} MHz, batch 1, {model.name}")
            rows = [("ONNX Runtime fp32", "ort", fp32), ("ONNX Runtime int8 (QDQ)", "ort", int8)]
            artifacts = args.artifact or [ROOT / "artifacts" / name / f"{model.name}-{v}"
                                          for v in ("fp32", "int8")]
            for artifact in artifacts:
                if (artifact / "manifest.json").is_file():
                    manifest = read_manifest(artifact)
                    if manifest.device.name == name:
                        rows.append((f"TVM {manifest.variant} ({manifest.tuning.trials} trials)",
                                     "tvm", str(artifact / "lib.so")))
            reference = None
            for label, runtime, path in rows:
                result = modeled_run(device, runtime, path, x_path)
                ms = result["ms"][0]
                reference = reference or ms
                top1 = "same top-1" if result["top1"] == expected else "OTHER top-1"
                print(f"  {label:<32} {ms:9.2f} ms modeled  {ms / reference:5.2f}x ORT fp32  "
                      f"{top1}  ({result['counters']['instructions'] / 1e6:.0f}M instructions)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
