"""Device classes: one YAML file per class under device_configs/, validated once at load.

A device class is what an artifact is built for: a TVM target, the compiler that links for it,
the RPC key its boards register under, and what its CPUs can do. `host` is this machine; its
YAML says `target: detect` and the target is read off the CPU when loaded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from pipeline.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "device_configs"

Capability = Literal["fp16", "int8", "dotprod", "neon", "avx2", "avx512", "vnni"]
CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))
_TARGET_KEYS = frozenset({"kind", "mtriple", "mcpu", "mattr", "num-cores"})
_TOP_KEYS = frozenset({"name", "description", "target", "cross_compiler", "rpc_key", "cores",
                       "capabilities", "tuning", "emulated_cpu"})
_TUNING_KEYS = frozenset({"trials", "trials_per_task"})

# LLVM features that a CPU model implies but a hypervisor may hide, keyed by /proc/cpuinfo flag.
# Compiling for the CPU model alone would emit instructions this machine traps on.
_MASKABLE_X86_FEATURES = {
    "avx512_fp16": "avx512fp16", "avx_vnni": "avxvnni", "amx_tile": "amx-tile",
    "amx_int8": "amx-int8", "amx_bf16": "amx-bf16", "avx512_bf16": "avx512bf16",
    "avx512_vnni": "avx512vnni", "avx512f": "avx512f", "avx512bw": "avx512bw",
}


@dataclass(frozen=True)
class Tuning:
    trials: int
    trials_per_task: int

    def __post_init__(self) -> None:
        if self.trials < 0 or self.trials_per_task < 1:
            raise ValueError("tuning.trials must be >= 0 and tuning.trials_per_task >= 1")


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    description: str
    target: dict[str, Any] = field(hash=False)
    cross_compiler: str | None
    rpc_key: str
    cores: int
    capabilities: frozenset[str]
    tuning: Tuning
    source: Path
    emulated_cpu: str | None = None

    @property
    def is_aarch64(self) -> bool:
        return str(self.target.get("mtriple", "")).startswith("aarch64")

    def tvm_target(self):
        import tvm

        return tvm.target.Target(dict(self.target))

    def compiler(self) -> str:
        """The C++ compiler that links libraries for this class; an error says how to get it."""
        compiler = self.cross_compiler or "g++"
        if shutil.which(compiler) is None:
            raise UserError(
                f"{self.source}: cross_compiler '{compiler}' is not installed. Install it (for "
                f"aarch64: apt-get install g++-aarch64-linux-gnu) or fix the key in the file.")
        return compiler


def available_devices(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def load_device(name_or_path: str, config_dir: Path = CONFIG_DIR) -> DeviceConfig:
    """Load a device class by name (device_configs/NAME.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(available_devices(config_dir)) or "none"
        raise UserError(f"Unknown device '{name_or_path}': no file {path}. Known device classes: "
                        f"{known}. Add a YAML file to {config_dir} to define a new one.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err}). Fix the file's syntax.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level.")
    return _parse(raw, path)


def _parse(raw: dict[str, Any], path: Path) -> DeviceConfig:
    def fail(key: str, problem: str) -> UserError:
        return UserError(f"{path}: key '{key}' {problem}. Fix the file and run again.")

    _reject_unknown(raw, _TOP_KEYS, "", fail)
    for key in ("name", "target", "rpc_key", "cores", "tuning"):
        if key not in raw:
            raise fail(key, "is missing")
    if raw["name"] != path.stem:
        raise fail("name", f"is '{raw['name']}' but the file is named {path.name}")
    target = _parse_target(raw["target"], fail)
    tuning_raw = raw["tuning"]
    if not isinstance(tuning_raw, dict):
        raise fail("tuning", "must be a mapping with trials and trials_per_task")
    _reject_unknown(tuning_raw, _TUNING_KEYS, "tuning.", fail)
    try:
        tuning = Tuning(int(tuning_raw.get("trials", 0)), int(tuning_raw.get("trials_per_task", 64)))
    except (TypeError, ValueError) as err:
        raise fail("tuning", f"is invalid: {err}") from None
    caps = raw.get("capabilities", [])
    unknown_caps = set(caps) - CAPABILITIES
    if unknown_caps:
        raise fail("capabilities", f"has unknown entries {sorted(unknown_caps)}; known: "
                                   f"{sorted(CAPABILITIES)}")
    cores = raw["cores"]
    if cores == "detect":
        cores = os.cpu_count() or 1
    if not isinstance(cores, int) or cores < 1:
        raise fail("cores", "must be a positive integer or 'detect'")
    target.setdefault("num-cores", cores)
    return DeviceConfig(
        name=raw["name"], description=str(raw.get("description", "")), target=target,
        cross_compiler=raw.get("cross_compiler"), rpc_key=str(raw["rpc_key"]), cores=cores,
        capabilities=frozenset(caps), tuning=tuning, source=path,
        emulated_cpu=raw.get("emulated_cpu"))


def _reject_unknown(raw: dict, known: frozenset[str], prefix: str, fail) -> None:
    for key in raw:
        if key not in known:
            raise fail(prefix + str(key), f"is unknown (known keys: {', '.join(sorted(known))})")


def _parse_target(raw: Any, fail) -> dict[str, Any]:
    if raw == "detect":
        return detect_host_target()
    if not isinstance(raw, dict):
        raise fail("target", "must be a mapping like {kind: llvm, mtriple: ..., mcpu: ...} "
                             "or the word 'detect'")
    _reject_unknown(raw, _TARGET_KEYS, "target.", fail)
    if raw.get("kind") != "llvm":
        raise fail("target.kind", "must be 'llvm' (CPU device classes only)")
    for key in ("mtriple", "mcpu"):
        if not isinstance(raw.get(key), str):
            raise fail(f"target.{key}", "is missing")
    from tvm.target import codegen

    if not codegen.llvm_is_valid_cpu(raw["mcpu"], raw["mtriple"]):
        raise fail("target.mcpu", f"names a CPU '{raw['mcpu']}' that LLVM does not know for "
                                  f"{raw['mtriple']} (a typo?)")
    return dict(raw)


def detect_host_target() -> dict[str, Any]:
    """This machine's CPU as an LLVM target, minus the features the kernel says are missing."""
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    target: dict[str, Any] = {"kind": "llvm", "mtriple": f"{os.uname().machine}-linux-gnu",
                              "mcpu": cpu}
    flags = _cpuinfo_flags()
    if flags and target["mtriple"].startswith("x86_64"):
        import tvm

        implied = codegen.llvm_get_cpu_features(tvm.target.Target(dict(target)))
        hidden = sorted(f"-{llvm}" for flag, llvm in _MASKABLE_X86_FEATURES.items()
                        if llvm in implied and flag not in flags)
        if hidden:
            target["mattr"] = hidden
    return target


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()
