"""The main job, shared by `pipeline.tune` and `pipeline.build`:
import -> (tune) -> build -> verify on a board -> package.

Order matters: verification runs before packaging so that no artifact exists whose outputs
were not checked against the framework on a board of its class.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pipeline import logs
from pipeline.artifact import (
    ARTIFACT_ROOT,
    CALIBRATION_NAME,
    DeviceInfo,
    Manifest,
    ModelInfo,
    TensorSpec,
    TuningInfo,
    Verification,
    write_artifact,
)
from pipeline.build import build_library
from pipeline.devices import DeviceConfig, load_device
from pipeline.errors import EXIT_USER_ERROR, UserError
from pipeline.importer import import_model
from pipeline.int8 import plan_to_json
from pipeline.logs import sha256_file
from pipeline.lowering import lower
from pipeline.models import LoadedModel, load_model
from pipeline.quantize import Quantized, QuantizeOptions, options_from_args, quantize
from pipeline.tuning import tune
from pipeline.verify import run_on_board, tolerance, verification
from rpc.local import local_farm
from rpc.tracker import TrackerAddress, parse_address, wait_for_boards

FP32 = QuantizeOptions()
TOOLCHAIN_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "torch", "onnx", "numpy")


@dataclass(frozen=True)
class JobResult:
    artifact: Path
    manifest: Manifest


def run_job(device: DeviceConfig, model: LoadedModel, trials: int,
            tracker: TrackerAddress | None, out_dir: Path | None = None,
            log_root: Path = logs.LOG_ROOT, out=None, verify: bool = True,
            options: QuantizeOptions = FP32) -> JobResult | None:
    """Quantize as `options` say, tune up to `trials` (0: build from the logs as they are),
    build, verify, package.

    Quantization and its accuracy gate come first: a model that loses too much accuracy is
    refused before any tuning time is spent on it. `verify=False` (the nightly job, when the
    farm has no board of the class) packages the artifact with no verification recorded.

    Returns None when tuning was interrupted (the logs keep every finished trial)."""
    out = out or sys.stderr
    variant = options.variant
    folder = logs.log_dir(device.name, model.name, variant, log_root)
    device = _device_for_logs(device, folder, out)
    print(f"importing {model.spec} ({model.source}, input {list(model.input_shape)})", file=out)
    imported = import_model(model)
    quantized = quantize(imported, model, device, options, out)
    with _farm(device, tracker) as address:
        if trials > 0:
            lowered = lower(quantized.mod, device.tvm_target())
            result = tune(lowered, device, folder, trials, address, out=out)
            if result.interrupted:
                return None
        print(f"building for {device.name} with the logs in {folder}", file=out)
        with tempfile.TemporaryDirectory(prefix="pipeline-build-") as scratch:
            # Build from and bundle one snapshot: a tuner may still be appending to `folder`.
            used_logs = Path(scratch) / "logs"
            logs.snapshot(folder, used_logs)
            built = build_library(quantized.mod, device, used_logs, Path(scratch) / "lib.so")
            print(f"  {built.tuned_kernels}/{built.total_kernels} kernels from the tuning logs",
                  file=out)
            checked = (_verify(built.path, model, quantized, device, address, out) if verify
                       else None)
            manifest = Manifest(
                model=ModelInfo(model.name, model.source, model.spec, model.sha256,
                                TensorSpec(model.input_name, model.input_shape),
                                TensorSpec("output", imported.output_shape)),
                device=DeviceInfo(device.name, device.target, device.rpc_key,
                                  sha256_file(device.source)),
                variant=variant, toolchain=toolchain_versions(device),
                tuning=TuningInfo(logs.count_records(used_logs), built.tuned_kernels,
                                  built.total_kernels, logs.file_hashes(used_logs)),
                files={}, verification=checked, quantization=quantized.quantization,
                accuracy=quantized.accuracy)
            dest = out_dir or ARTIFACT_ROOT / device.name / f"{model.name}-{variant}"
            extras = ({CALIBRATION_NAME: plan_to_json(quantized.plan)}
                      if quantized.plan is not None else {})
            manifest = write_artifact(dest, built.path, used_logs, manifest, extras)
    return JobResult(dest, manifest)


def _verify(lib: Path, model: LoadedModel, quantized: Quantized, device: DeviceConfig,
            address: TrackerAddress, out) -> Verification:
    """The board's output against the framework's (fp32), or against the same quantized model
    compiled for this machine (int8, fp16: the framework has no such model)."""
    x = model.sample_input()
    if quantized.reference is None:
        reference, against = model.reference_output(x), "the framework"
    else:
        reference = quantized.reference(x)
        against = f"the {quantized.variant} model on this machine"
    print(f"verifying on a '{device.rpc_key}' board via {address} against {against}", file=out)
    wait_for_boards(address, device.rpc_key)
    run = run_on_board(lib, address, device.rpc_key, x)
    checked = verification(run, reference)
    print(f"  ran on board {run.board.name}" + (" (emulated: not timed)"
                                                if run.board.emulated else ""), file=out)
    allowed = tolerance(reference, quantized.variant)
    if not checked.max_abs_error <= allowed:
        raise RuntimeError(f"the compiled {model.name} differs from {against} by "
                           f"{checked.max_abs_error:.3g} (tolerance {allowed:.3g}): a compiler "
                           f"bug, not packaged")
    return checked


def _device_for_logs(device: DeviceConfig, folder: Path, out) -> DeviceConfig:
    buildable = logs.buildable_device(device, folder)
    if buildable is not device:
        print(f"{device.name}: this CPU ({device.target['mcpu']}) runs every instruction of "
              f"{buildable.target['mcpu']}, the CPU model the logs in {folder} were tuned for: "
              f"building for {buildable.target['mcpu']}", file=out)
    return buildable


@contextlib.contextmanager
def _farm(device: DeviceConfig, tracker: TrackerAddress | None):
    if tracker is not None:
        yield tracker
        return
    emulated = device.is_aarch64 and platform.machine() != "aarch64"
    print(f"no --tracker: starting an embedded farm with one {'emulated ' if emulated else ''}"
          f"'{device.rpc_key}' board on this machine", file=sys.stderr)
    with local_farm(device) as farm:
        yield farm.address


def toolchain_versions(device: DeviceConfig) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TOOLCHAIN_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    compiler = device.compiler()
    first_line = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                check=False).stdout.splitlines()
    versions["compiler"] = f"{compiler}: {first_line[0] if first_line else 'unknown'}"
    return versions


def run_cli(args: argparse.Namespace, tune_trials: int | None) -> int:
    """Shared body of the tune/build CLIs: parse-level values in, exit status out."""
    metaschedule = logging.getLogger("tvm.s_tir.meta_schedule")
    if getattr(args, "verbose", False):
        metaschedule.setLevel(logging.INFO)
        metaschedule.addHandler(logging.StreamHandler(sys.stderr))
    else:
        metaschedule.setLevel(logging.WARNING)
    try:
        device = load_device(args.device)
        model = load_model(args.model, args.input_shape)
        tracker = parse_address(args.tracker) if args.tracker else None
        trials = device.tuning.trials if tune_trials is None else tune_trials
        result = run_job(device, model, trials, tracker, args.out, args.logs,
                         options=options_from_args(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was packaged; finished tuning trials are in the logs",
              file=sys.stderr)
        return 130
    if result is None:
        # MetaSchedule's RPC runner may still hold a request for the (now stopped) embedded
        # tracker in a worker thread that retries forever and would keep the process alive;
        # the logs are on disk and the farm is down, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    check = result.manifest.verification
    print(f"artifact: {result.artifact}")
    if check is not None:
        latency = (f", {check.latency_ms_median:.2f} ms median on the board"
                   if check.latency_ms_median is not None else "")
        print(f"verified on a '{check.board}' board: max abs error {check.max_abs_error:.2e}, "
              f"top-1 {'matches' if check.top1_matches_framework else 'DIFFERS from'} the "
              f"framework{latency}")
    return 0
