"""`python -m pipeline.rebuild ARTIFACT`: rebuild an artifact from its own manifest and bundled
tuning logs and prove the library is byte-identical, or name the input that differs."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact import CALIBRATION_NAME, LIB_NAME, LOGS_DIRNAME, Manifest, read_intact
from pipeline.build import build_library
from pipeline.devices import load_device
from pipeline.errors import EXIT_USER_ERROR, UserError
from pipeline.importer import import_model
from pipeline.logs import buildable_device, sha256_file
from pipeline.models import load_model


@dataclass(frozen=True)
class RebuildReport:
    identical: bool
    expected_sha256: str
    rebuilt_sha256: str
    differences: tuple[str, ...]  # inputs that differ from the manifest's record


def rebuild(artifact: Path) -> RebuildReport:
    from pipeline.flow import toolchain_versions

    manifest = read_intact(artifact)
    device = buildable_device(load_device(manifest.device.name), artifact / LOGS_DIRNAME)
    model = load_model(manifest.model.spec, tuple(manifest.model.input.shape))
    differences = input_differences(manifest, device, model, toolchain_versions(device))
    mod = import_model(model).mod
    if manifest.quantization is not None:
        mod = requantize_artifact(artifact, manifest, mod)
    with tempfile.TemporaryDirectory(prefix="pipeline-rebuild-") as scratch:
        built = build_library(mod, device, artifact / LOGS_DIRNAME, Path(scratch) / LIB_NAME)
        rebuilt = sha256_file(built.path)
    expected = manifest.files[LIB_NAME]
    return RebuildReport(rebuilt == expected, expected, rebuilt, tuple(differences))


def requantize_artifact(artifact: Path, manifest: Manifest, mod):
    """The artifact's quantized module: its recorded calibration applied to `mod` as it was."""
    from pipeline.int8 import plan_from_json
    from pipeline.quantize import requantize

    record = artifact / CALIBRATION_NAME
    plan = plan_from_json(record.read_text(), str(record)) if record.is_file() else None
    return requantize(mod, manifest.quantization, plan)


def input_differences(manifest: Manifest, device, model, toolchain: dict[str, str]) -> list[str]:
    found = []
    if model.sha256 != manifest.model.sha256:
        found.append(f"model {manifest.model.spec}: sha256 {model.sha256[:12]} now, "
                     f"{manifest.model.sha256[:12]} in the manifest (weights or file changed)")
    if device.target != manifest.device.target:
        found.append(f"target: {device.target} now, {manifest.device.target} in the manifest")
    for name, version in sorted(manifest.toolchain.items()):
        if toolchain.get(name) != version:
            found.append(f"{name}: {toolchain.get(name)} now, {version} in the manifest")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.rebuild",
        description="Rebuild ARTIFACT from its manifest and bundled tuning logs, and check that "
                    "the library is byte-identical to the packaged one. Exit 0 if identical, 1 if "
                    "not (naming the inputs that changed), 2 on bad input.")
    parser.add_argument("artifact", type=Path, help="artifact folder (holds manifest.json)")
    args = parser.parse_args(argv)
    try:
        report = rebuild(args.artifact)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if report.identical:
        print(f"identical: {LIB_NAME} rebuilt byte for byte (sha256 {report.rebuilt_sha256})")
        return 0
    print(f"DIFFERENT: rebuilt {LIB_NAME} has sha256 {report.rebuilt_sha256}, the manifest "
          f"records {report.expected_sha256}")
    for line in report.differences or ("no recorded input differs: the build is not "
                                       "deterministic (a bug worth reporting)",):
        print(f"  - {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
