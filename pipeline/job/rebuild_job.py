"""Rebuild an artifact from its own manifest and bundled tuning logs and prove the library is
byte-identical, or name the recorded input that differs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.manifest import (
    CALIBRATION_NAME,
    LIB_NAME,
    LOGS_DIRNAME,
    Manifest,
    read_intact,
)
from pipeline.artifact.tuning_logs import buildable_device
from pipeline.base.devices import device_class
from pipeline.base.files import sha256_file
from pipeline.compile.build import build_library
from pipeline.compile.lowering import lower
from pipeline.frontend.importer import import_model
from pipeline.frontend.models import LoadedModel
from pipeline.job.provenance import input_differences, recorded_model
from pipeline.quantization import plan_from_json, requantize


@dataclass(frozen=True)
class RebuildReport:
    identical: bool
    expected_sha256: str
    rebuilt_sha256: str
    differences: tuple[str, ...]  # inputs that differ from the manifest's record


def rebuild(artifact: Path, model: LoadedModel | None = None) -> RebuildReport:
    """`model`: the model as the user names it, for artifacts whose model the manifest cannot
    load by itself (a PyTorch factory); its hash is compared with the recorded one."""
    manifest = read_intact(artifact)
    device = buildable_device(device_class(manifest.device.name), artifact / LOGS_DIRNAME)
    model = model or recorded_model(manifest)
    differences = input_differences(manifest, device, model)
    mod = import_model(model).mod
    if manifest.quantization is not None:
        mod = requantize_artifact(artifact, manifest, mod)
    lowered = lower(mod, device.tvm_target())
    with tempfile.TemporaryDirectory(prefix="pipeline-rebuild-") as scratch:
        built = build_library(lowered, device, artifact / LOGS_DIRNAME, Path(scratch) / LIB_NAME)
        rebuilt = sha256_file(built.path)
    expected = manifest.files[LIB_NAME]
    return RebuildReport(rebuilt == expected, expected, rebuilt, tuple(differences))


def requantize_artifact(artifact: Path, manifest: Manifest, mod):
    """The artifact's quantized module: its recorded calibration applied to `mod` as it was."""
    record = artifact / CALIBRATION_NAME
    plan = plan_from_json(record.read_text(), str(record)) if record.is_file() else None
    return requantize(mod, manifest.quantization, plan, manifest.device.target)
