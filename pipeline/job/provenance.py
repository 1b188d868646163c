"""What a build depends on beyond its inputs' bytes: the toolchain recorded in every manifest,
and the comparison a rebuild (or the nightly job) makes against a manifest's record."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from importlib import metadata

from pipeline.artifact.manifest import Manifest
from pipeline.base.devices import DeviceConfig
from pipeline.base.errors import UserError
from pipeline.frontend.models import ZOO_NAMES, LoadedModel, load_model

TOOLCHAIN_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "torch", "onnx", "onnxsim", "numpy")


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


def recorded_model(manifest: Manifest) -> LoadedModel:
    """The model an artifact was built from, loaded as data only: a zoo entry by name, or the
    ONNX file at the recorded path (its hash is compared by `input_differences`). A PyTorch
    factory would be code named by the manifest: it is never imported from one."""
    model = manifest.model
    shape = tuple(model.input.shape)
    if model.source == "zoo" and model.spec in ZOO_NAMES:
        return load_model(model.spec, shape)
    if model.source == "onnx" and model.spec.endswith(".onnx"):
        return load_model(model.spec, shape)
    raise UserError(f"The artifact was built from {model.source} model {model.spec!r}, which "
                    f"cannot be loaded from the artifact alone (a PyTorch factory is code, and "
                    f"an artifact is data). Name it yourself: python -m pipeline.rebuild ARTIFACT "
                    f"--model {model.spec} --input-shape {','.join(map(str, shape))}.")


def input_differences(manifest: Manifest, device: DeviceConfig, model: LoadedModel) -> list[str]:
    """The recorded inputs of `manifest` that differ now: model bytes, target, toolchain."""
    found = []
    if model.sha256 != manifest.model.sha256:
        found.append(f"model {manifest.model.spec}: sha256 {model.sha256[:12]} now, "
                     f"{manifest.model.sha256[:12]} in the manifest (weights or file changed)")
    if device.target != manifest.device.target:
        found.append(f"target: {device.target} now, {manifest.device.target} in the manifest")
    toolchain = toolchain_versions(device)
    for name, version in sorted(manifest.toolchain.items()):
        if toolchain.get(name) != version:
            found.append(f"{name}: {toolchain.get(name)} now, {version} in the manifest")
    return found
