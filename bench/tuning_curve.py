"""Model latency against tuning minutes for a model with no logs of its own, three ways, in one
run on this machine: cold (no transfer, a fresh cost model), transfer only (a fresh cost model),
and transfer + the cost model trained on the class's committed records.

    python bench/tuning_curve.py [--model resnet-18] [--device host] [--minutes 10]
                                 [--modes cold,transfer,trained] [--json FILE]

Each mode runs `pipeline.tune` into logs of its own (the committed class logs next to them, for
transfer and the trained model) and is stopped with Ctrl-C after --minutes, transfer included
in that time. Its progress lines give the estimated model latency (the sum of each kernel's
best measured time, weighted by its calls) as minutes pass; at the end each mode's logs are
built and the library timed alone in a fresh process, next to ONNX Runtime alone. --json
writes the curves, rewritten as each mode ends (a run cut short keeps what it measured); the
nightly report plots the file its matrix names under `tuning_minutes`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODES = {"cold": ["--no-transfer", "--fresh-cost-model"], "transfer": ["--fresh-cost-model"],
         "trained": []}
ESTIMATE = re.compile(r"model est\. ([0-9.]+) ms")


def _tune(mode: str, args, logs: Path, out: Path) -> list[tuple[float, float]]:
    """(minutes, estimated ms) as the tuner reports them, for --minutes, then Ctrl-C."""
    cmd = [sys.executable, "-m", "pipeline.tune", "--device", args.device, "--model", args.model,
           "--trials", "20000", "--logs", str(logs), "--out", str(out), *MODES[mode]]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    start, curve = time.monotonic(), []

    def read() -> None:
        for line in proc.stderr:
            found = ESTIMATE.search(line)
            if found:
                curve.append(((time.monotonic() - start) / 60, float(found.group(1))))
            if "cost model" in line or "transfer" in line.lower():
                print(f"  [{mode}] {line.rstrip()}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
    reader.join(timeout=30)
    return curve


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _llvm_cpu() -> str:
    from pipeline.base.devices import detect_host_target

    return str(detect_host_target().get("mcpu", "?"))


def _at(curve: list[tuple[float, float]], minute: float) -> float | None:
    seen = [ms for t, ms in curve if t <= minute]
    return min(seen) if seen else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet-18")
    parser.add_argument("--device", default="host")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--modes", default="cold,transfer,trained")
    parser.add_argument("--json", type=Path, help="write the curves here (the nightly plots it)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from efficientnet_lite0 import export_onnx
    from transfer import _alone

    from pipeline.build import main as build
    from pipeline.frontend.models import load_model

    modes = args.modes.split(",")
    model = load_model(args.model)
    curves, latency = {}, {}
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machine = f"{_cpu_name()} ({_llvm_cpu()}), {os.cpu_count()} cores"

    def save(ort_ms: float | None) -> None:
        if args.json is None:
            return
        result = {"schema": "edge-tvm-pipeline/tuning-minutes", "schema_version": 1,
                  "model": args.model, "device": args.device, "minutes": args.minutes,
                  "started": started, "machine": machine,
                  "command": "python3 bench/tuning_curve.py " + " ".join(argv or sys.argv[1:]),
                  "onnxruntime_ms": ort_ms,
                  "modes": {m: {"curve": [[round(t, 3), ms] for t, ms in curves[m]],
                                "built_ms": latency[m]} for m in latency}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="bench-curve-") as scratch_name:
        scratch = Path(scratch_name)
        np.save(scratch / "x.npy", model.sample_input())
        for mode in modes:
            logs = scratch / mode / "logs"
            logs.mkdir(parents=True)
            for class_dir in (ROOT / "tuning_logs").iterdir():  # read only: tuning writes
                (logs / class_dir.name).symlink_to(class_dir)  # into logs/<device>/ below
            own = logs / args.device
            if own.is_symlink():  # a committed class: its logs of other models stay readable
                own.unlink()
                shutil.copytree(ROOT / "tuning_logs" / args.device, own, symlinks=True)
            print(f"== {mode}: {args.minutes:g} min of pipeline.tune", flush=True)
            curves[mode] = _tune(mode, args, logs, scratch / mode / "tuned")
            out = scratch / mode / "artifact"
            build_args = ["--device", args.device, "--model", args.model, "--logs", str(logs),
                          "--out", str(out)]
            if build(build_args + (["--no-transfer"] if mode == "cold" else [])) != 0:
                raise SystemExit(f"building the {mode} logs failed")
            threads = min(os.cpu_count() or 1, 2)
            latency[mode] = _alone("tvm", out / "lib.so", threads, scratch / "x.npy")
            print(f"== {mode}: built from its logs, {latency[mode]:.2f} ms alone", flush=True)
            save(None)
        plain, lean = export_onnx(model, model.sample_input(), scratch_name)
        ort = min(_alone("ort", path, threads, scratch / "x.npy") for path in (plain, lean))
    marks = [m for m in (1, 2, 3, 5, 7.5, 10, 15, 20, 30) if m <= args.minutes] + [args.minutes]
    marks = sorted(set(marks))
    print(f"\n{args.model} on {args.device}: estimated model latency (ms) after N minutes of "
          f"pipeline.tune (transfer included); then built and timed alone, ONNX Runtime "
          f"{ort:.2f} ms")
    print(f"{'mode':10s}" + "".join(f"{m:>8g}m" for m in marks) + f"{'built':>10s}{'/ORT':>8s}")
    for mode in modes:
        cells = "".join(f"{v:9.2f}" if (v := _at(curves[mode], m)) is not None else f"{'-':>9s}"
                        for m in marks)
        print(f"{mode:10s}{cells}{latency[mode]:10.2f}{latency[mode] / ort:7.2f}x")
    save(ort)
    return 0


if __name__ == "__main__":
    sys.exit(main())
