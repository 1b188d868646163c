"""How far the timing model lands from published real-board figures: LiteRT (XNNPACK) runs the
same networks on modeled arm-a53 and rpi4 boards, and each figure is set beside one published
for that runtime on that board.

    python3 -m venv --system-site-packages /tmp/litert
    /tmp/litert/bin/pip install litert-torch==0.10.0 typing_extensions==4.15.0
    /tmp/litert/bin/python bench/timing_model_validation.py

litert-torch (which writes the .tflite models; the boards get LiteRT's aarch64 wheel) lives in
a venv of its own: its xdsl pins typing_extensions below the version TVM's FFI needs, which the
conversion does not use (the pin is overridden there).

The model is one core; the published figures are multi-threaded (4 threads, one per core). The
modeled figure is divided by the thread count (perfect scaling, the model's best case for the
board) and the ratio modeled/published printed: 1.0 would be exact, below 1 the model is
optimistic. The networks are the zoo's (seeded weights: XNNPACK's speed does not depend on the
weights' values; the published runs used random weights too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (zoo model, device class, threads, published ms, where it was published)
PUBLISHED = (
    ("mobilenet-v2", "arm-a53", 4, 79.0,
     "XNNPACK README, RPi 3+ (BCM2837B0, 4x A53 1.4 GHz), Feb 2020"),
    ("mobilenet-v2", "rpi4", 4, 44.0,
     "XNNPACK README, RPi 4 (BCM2711, 4x A72 1.5 GHz), Feb 2020"),
    ("efficientnet-lite0", "arm-a53", 4, 135.0,
     "TFLite + XNNPACK on a Pi 3B+ as quoted in issue 18 (threads not stated; taken as 4)"),
)
PEERS = ("ai-edge-litert==2.3.0",)


def to_tflite(name: str, folder: str) -> tuple[str, str]:
    """The zoo model as a channels-last .tflite file, and a sample input for it."""
    import litert_torch
    import torch

    from pipeline.frontend.models import load_model

    model = load_model(name)
    x = model.sample_input()
    module = litert_torch.to_channel_last_io(model.torch_module.eval(), args=[0]).eval()
    edge = litert_torch.convert(module, (torch.from_numpy(x).permute(0, 2, 3, 1).contiguous(),))
    path = os.path.join(folder, f"{name}.tflite")
    edge.export(path)
    inputs = os.path.join(folder, f"{name}.npy")
    np.save(inputs, x)
    return path, inputs


def main() -> int:
    from pipeline.base.devices import load_device
    from pipeline.farm import emulated, modeled

    emulated.add_board_packages(PEERS)
    with tempfile.TemporaryDirectory() as folder:
        files = {name: to_tflite(name, folder) for name in {row[0] for row in PUBLISHED}}
        print(f"{'model':<20}{'board':<10}{'modeled 1 core':>16}{'/ threads':>11}"
              f"{'published':>11}{'ratio':>8}  source")
        for name, device_name, threads, published, source in PUBLISHED:
            device = load_device(device_name)
            path, inputs = files[name]
            done = subprocess.run(
                [str(modeled.require_ready(device)), str(ROOT / "bench" / "modeled_run.py"),
                 "litert", path, inputs, "--repeats", "1"],
                capture_output=True, text=True, check=True)
            ms = json.loads(done.stdout.strip().splitlines()[-1])["ms"][0]
            scaled = ms / threads
            print(f"{name:<20}{device_name:<10}{ms:>13.1f} ms{scaled:>8.1f} ms{published:>8.1f} ms"
                  f"{scaled / published:>8.2f}  {source}", flush=True)
        print(f"(model: {modeled.label(load_device('arm-a53'))}, "
              f"{modeled.label(load_device('rpi4'))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
