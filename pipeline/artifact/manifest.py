"""The artifact: lib.so + manifest.json + the tuning logs it was built from, in one folder.

One manifest schema, versioned, typed: `Manifest.from_dict` refuses unknown or missing keys and
other schema versions, so a reader never guesses. Folders are written to a temporary sibling
and renamed into place: an artifact is either complete or absent."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.base.errors import UserError
from pipeline.base.files import sha256_file
from pipeline.base.variant import ArtifactKey, Variant

SCHEMA = "edge-tvm-pipeline/artifact"


# 2: quantization and accuracy sections; 3: tuning.kernels; 4: accuracy on every evaluation set,
# per-layer sensitivity; 5: verification.measurement
SCHEMA_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)  # older ones read with what they lack left empty


LIB_NAME = "lib.so"


MANIFEST_NAME = "manifest.json"


LOGS_DIRNAME = "tuning_logs"


CALIBRATION_NAME = "calibration.json"  # int8: the activation ranges the build applied




@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # zoo | onnx | torch
    spec: str
    sha256: str
    input: TensorSpec
    output: TensorSpec


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    target: dict[str, Any]
    rpc_key: str
    config_sha256: str


@dataclass(frozen=True)
class TuningInfo:
    trials: int
    tuned_kernels: int
    total_kernels: int
    log_sha256: dict[str, str]
    # kernel -> "tuned" (searched on boards of the class), "transferred from <logs> <kernel>"
    # (pipeline.compile.transfer), or "default" (no schedule: TVM's untuned code)
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    board: str  # the board that ran it: its farm name, or its RPC key for other servers
    emulated: bool
    max_abs_error: float
    top1_matches_framework: bool
    latency_ms_median: float | None  # None on emulated boards: their timings mean nothing
    latency_ms_p90: float | None
    threads: int | None = None  # TVM threads on the board (None: not told by the board)
    # What the latency is: "measured", or a timing model's label ("modeled (Cortex-A53 model
    # v1)") on a modeled board; None when not timed. A modeled figure is never compared with
    # a measured one.
    timing: str | None = None
    # Why the comparison proves little (an output that is constant, or the same for every
    # input); None when the reference output varies.
    reference_degenerate: str | None = None
    # How the latency was taken (runs, warm-up, blocks, threads), in words; None when not timed.
    measurement: str | None = None


@dataclass(frozen=True)
class DataInfo:
    spec: str  # builtin, a folder, or a .npy/.npz file, as given
    count: int
    sha256: str  # of the samples exactly as used


@dataclass(frozen=True)
class Quantization:
    mode: str  # int8 | fp16
    int8_layers: int  # convolutions and matmuls computing in int8 (0 for fp16)
    float_layers: tuple[str, ...] = ()  # quantizable layers left in float, asked or by fallback
    fallback_layers: tuple[str, ...] = ()  # of those, the ones the accuracy fallback chose
    method: str | None = None  # minmax | percentile | entropy | mse (int8)
    percentile: float | None = None
    calibration: DataInfo | None = None
    # int8: layer -> SQNR (dB) of the outputs with only that layer in int8, on a few inputs of
    # every evaluation set (the worst); the fallback keeps the lowest in float first.
    sensitivity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Accuracy:
    """The quantized model against the fp32 one on `eval_data` (the fp32 model is the
    framework's own: PyTorch or ONNX Runtime)."""

    eval_data: DataInfo
    top1_agreement: float  # fraction of inputs whose top-1 class is the fp32 model's
    top5_overlap: float | None  # mean fraction of the fp32 top-5 in the quantized top-5
    sqnr_db: float  # fp32 output power over the power of the difference, in dB
    accuracy: float | None  # top-1 accuracy against the labels, where the data has them
    reference_accuracy: float | None  # the fp32 model's, on the same data
    drop_points: float  # accuracy lost in points (labels), else top-1 disagreement in points
    max_drop_points: float  # the threshold packaging enforced
    forced: bool  # packaged with --force although drop_points > max_drop_points


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    device: DeviceInfo
    variant: Variant
    toolchain: dict[str, str]  # package -> version, plus the linker's version line
    tuning: TuningInfo
    files: dict[str, str]  # relative path -> sha256, lib and bundled logs
    verification: Verification | None = None
    quantization: Quantization | None = None
    accuracy: Accuracy | None = None  # the worst of `evaluations`: what the accuracy gate judged
    evaluations: tuple[Accuracy, ...] = ()  # one per evaluation set, shifted ones included
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> ArtifactKey:
        return ArtifactKey(self.device.name, self.model.name, self.variant)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True,
                          default=lambda value: value.value) + "\n"  # enums by their names

    @staticmethod
    def from_dict(raw: Any, where: str = "manifest") -> Manifest:
        if not isinstance(raw, dict):
            raise UserError(f"{where}: a manifest is a JSON object, not {type(raw).__name__}; "
                            f"the artifact is damaged.")
        if raw.get("schema") != SCHEMA or raw.get("schema_version") not in READABLE_VERSIONS:
            raise UserError(f"{where}: schema {raw.get('schema')} v{raw.get('schema_version')} is "
                            f"not {SCHEMA} v{SCHEMA_VERSION}; rebuild the artifact with this "
                            f"version of the pipeline.")
        manifest = from_json(Manifest, raw, where)
        manifest.key  # noqa: B018 - the names that become paths must be plain names
        outside = [path for path in manifest.files if not _plain_relative(path)]
        if outside or LIB_NAME not in manifest.files:
            raise UserError(f"{where}: files must list {LIB_NAME} and the artifact's other files "
                            f"by relative path inside it ({outside or 'no ' + LIB_NAME}). The "
                            f"manifest is damaged.")
        return manifest


def from_json(cls, raw: Any, where: str):
    """`cls` from JSON, every field checked against its annotation: a manifest (or a record
    beside the tuning logs) is data from outside until proven otherwise, and a wrong type is
    named here, not as a crash later."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {cls.__name__} must be an object, not {type(raw).__name__}.")
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)} in {cls.__name__}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"{where}: missing key '{f.name}' in {cls.__name__}.")
            continue
        kwargs[f.name] = _decode(raw[f.name], hints[f.name], f"{where}: {cls.__name__}.{f.name}")
    return cls(**kwargs)


def _decode(value: Any, kind: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(value, inner, where)
    if dataclasses.is_dataclass(kind):
        return from_json(kind, value, where)
    if kind is Variant:
        return Variant.parse(str(value), where)
    if origin is tuple:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list.")
        return tuple(_decode(item, args[0], where) for item in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be an object.")
        return {str(k): _decode(v, args[1], where) for k, v in value.items()}
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
        raise UserError(f"{where} must be {kind.__name__}, not {type(value).__name__} "
                        f"({value!r:.40}); the file is damaged: restore it.")
    return float(value) if kind is float else value


def _plain_relative(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and "\\" not in path and all(
        part not in ("..", ".") for part in parts)


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{folder} is not an artifact: it has no {MANIFEST_NAME}.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); the artifact is damaged.") from None
    return Manifest.from_dict(raw, str(path))


def check_hashes(folder: Path, manifest: Manifest) -> list[str]:
    """The files whose content differs from the manifest's hashes (missing ones included)."""
    bad = []
    for rel, expected in sorted(manifest.files.items()):
        path = folder / rel
        if not path.is_file() or sha256_file(path) != expected:
            bad.append(rel)
    return bad


def read_intact(folder: Path) -> Manifest:
    """The manifest of an artifact whose files all match it; an error names those that do not."""
    manifest = read_manifest(folder)
    damaged = check_hashes(folder, manifest)
    if damaged:
        raise UserError(f"{folder}: {', '.join(damaged)} differ from the manifest's hashes: the "
                        f"artifact was modified or truncated. Rebuild it from its logs.")
    return manifest
