"""Device classes: one YAML file per class under device_configs/, validated once at load.

A device class is what an artifact is built for: a TVM target, the compiler that links for it,
the RPC key its boards register under, and what its CPUs can do. `host` is this machine; its
YAML says `target: detect` and the target is read off the CPU when loaded.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.base.errors import UserError
from pipeline.base.files import plain_name, read_yaml
from pipeline.base.paths import DEVICE_CONFIGS

CONFIG_DIR = DEVICE_CONFIGS
CPUINFO = Path("/proc/cpuinfo")

Capability = Literal["fp16", "int8", "dotprod", "neon", "avx2", "avx512", "vnni"]
CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))
TARGET_KEYS = frozenset({"kind", "mtriple", "mcpu", "mattr", "num-cores"})
_TOP_KEYS = frozenset({"name", "description", "target", "cross_compiler", "rpc_key", "cores",
                       "capabilities", "tuning", "emulated_cpu", "timing_model"})
# The parameters rpc/timing_model.c takes (all of them, each a non-negative integer).
TIMING_PARAMETERS = frozenset({
    "freq_mhz", "out_of_order", "width", "rob", "fma_accumulate_latency",
    *(f"latency_{kind}" for kind in ("alu", "mul", "div", "branch", "load", "store", "fp", "fma",
                                     "valu", "vmul", "vperm")),
    "alu_units", "mac_units", "branch_units", "load_units", "store_units", "fp_units",
    "fmac_units", "store_shares_load", "fmac_shares_fp", "q_load_cycles", "q_store_cycles",
    "q_fp_cycles", "q_load_exclusive", "l1_kb", "l1_ways", "l2_kb", "l2_ways", "line",
    "l2_cycles", "dram_cycles", "dram_bytes_per_kcycle", "streams", "stride_prefetch",
    "exposed_percent"})
_TIMING_OPTIONAL = frozenset({"rob"})  # out-of-order cores only
_TUNING_KEYS = frozenset({"trials", "trials_per_task"})

# /proc/cpuinfo flag -> LLVM feature, for the x86 extensions a CPU model may imply but this
# machine may lack (older part, or a hypervisor that hides AVX-512-FP16 or AMX).
_X86_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512cd": "avx512cd",
    "avx512dq": "avx512dq", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi", "avx512_vbmi2": "avx512vbmi2",
    "avx512_vnni": "avx512vnni", "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq", "gfni": "gfni", "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq", "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16",
    "avx_vnni": "avxvnni", "amx_tile": "amx-tile", "amx_int8": "amx-int8", "amx_bf16": "amx-bf16",
}
# Newest first: the host gets the first CPU model whose implied extensions it really has.
_X86_MODELS = ("sapphirerapids", "icelake-server", "cascadelake", "skylake-avx512", "haswell",
               "x86-64-v2", "x86-64")


@dataclass(frozen=True)
class Tuning:
    trials: int
    trials_per_task: int

    def __post_init__(self) -> None:
        if self.trials < 0 or self.trials_per_task < 1:
            raise ValueError("tuning.trials must be >= 0 and tuning.trials_per_task >= 1")


@dataclass(frozen=True)
class TimingModel:
    """The class's core as the modeled board's timing model sees it (rpc/TIMING_MODEL.md)."""
    core: str  # e.g. Cortex-A53
    parameters: tuple[tuple[str, int], ...]  # sorted by name

    @property
    def freq_mhz(self) -> int:
        return dict(self.parameters)["freq_mhz"]


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
    detected: bool = False  # `target: detect`: this machine's CPU, read off at load
    timing_model: TimingModel | None = None  # aarch64 classes: what a modeled board runs

    def with_target(self, target: dict[str, Any]) -> DeviceConfig:
        return replace(self, target=dict(target))

    @property
    def is_aarch64(self) -> bool:
        return str(self.target.get("mtriple", "")).startswith("aarch64")

    @property
    def emulated_here(self) -> bool:
        """Boards of this class run on this machine only under emulation (qemu)."""
        return self.is_aarch64 and platform.machine() != "aarch64"

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


def device_class(name: str) -> DeviceConfig:
    """A shipped device class by its name only, never a path: for names read from artifacts
    and inventories, which must not point the pipeline at a file of their choosing."""
    if Path(name).suffix in (".yaml", ".yml"):
        raise UserError(f"Device class {name!r} is a file name; a class is named by its name "
                        f"(one of {', '.join(available_devices())}).")
    return load_device(name)


def available_devices(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def x86_classes_fastest_first(config_dir: Path = CONFIG_DIR) -> list[DeviceConfig]:
    """The shipped x86-64 classes with a fixed target, the one whose CPU model implies the most
    instruction-set extensions first (AVX-512 + VNNI before AVX2)."""
    import tvm
    from tvm.target import codegen

    classes = [load_device(name, config_dir) for name in available_devices(config_dir)]
    x86 = [c for c in classes
           if not c.detected and str(c.target.get("mtriple", "")).startswith("x86_64")]

    def extensions(device: DeviceConfig) -> int:
        implied = codegen.llvm_get_cpu_features(tvm.target.Target(
            {k: v for k, v in device.target.items() if k in ("kind", "mtriple", "mcpu", "mattr")}))
        return sum(llvm in implied for llvm in _X86_FEATURES.values())

    return sorted(x86, key=lambda c: (-extensions(c), c.name))


def load_device(name_or_path: str, config_dir: Path = CONFIG_DIR) -> DeviceConfig:
    """Load a device class by name (device_configs/NAME.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir / f"{plain_name(name_or_path, 'device class')}.yaml"
    if not path.is_file():
        known = ", ".join(available_devices(config_dir)) or "none"
        raise UserError(f"Unknown device '{name_or_path}': no file {path}. Known device classes: "
                        f"{known}. Add a YAML file to {config_dir} to define a new one.")
    raw = read_yaml(path, "device class")
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
    tuning = Tuning(_count(tuning_raw.get("trials", 0), "tuning.trials", fail, minimum=0),
                    _count(tuning_raw.get("trials_per_task", 64), "tuning.trials_per_task",
                           fail))
    caps = raw.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise fail("capabilities", f"must be a list of names from {sorted(CAPABILITIES)}")
    unknown_caps = set(caps) - CAPABILITIES
    if unknown_caps:
        raise fail("capabilities", f"has unknown entries {sorted(unknown_caps)}; known: "
                                   f"{sorted(CAPABILITIES)}")
    cores = raw["cores"]
    cores = (os.cpu_count() or 1) if cores == "detect" else _count(cores, "cores", fail)
    target.setdefault("num-cores", cores)
    for key in ("description", "cross_compiler", "emulated_cpu"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise fail(key, "must be a string")
    timing = _parse_timing_model(raw["timing_model"], fail) if "timing_model" in raw else None
    if timing is not None and not str(target.get("mtriple", "")).startswith("aarch64"):
        raise fail("timing_model", "is for aarch64 classes only (the model runs under qemu)")
    return DeviceConfig(
        name=raw["name"], description=str(raw.get("description", "")), target=target,
        cross_compiler=raw.get("cross_compiler"), rpc_key=_string(raw["rpc_key"], "rpc_key", fail),
        cores=cores, capabilities=frozenset(caps), tuning=tuning, source=path,
        emulated_cpu=raw.get("emulated_cpu"), detected=raw["target"] == "detect",
        timing_model=timing)


def _parse_timing_model(raw: Any, fail) -> TimingModel:
    if not isinstance(raw, dict) or not isinstance(raw.get("core"), str):
        raise fail("timing_model", "must be a mapping with a core name and the model's "
                                   "parameters")
    values = {k: v for k, v in raw.items() if k != "core"}
    _reject_unknown(values, TIMING_PARAMETERS, "timing_model.", fail)
    missing = TIMING_PARAMETERS - _TIMING_OPTIONAL - set(values)
    if missing:
        raise fail("timing_model", f"lacks {sorted(missing)}")
    for key, value in values.items():
        _count(value, f"timing_model.{key}", fail, minimum=0)
    if values.get("out_of_order") and not values.get("rob"):
        raise fail("timing_model.rob", "must be given (>= 1) for an out-of-order core")
    if not values["freq_mhz"]:
        raise fail("timing_model.freq_mhz", "must be >= 1")
    return TimingModel(raw["core"], tuple(sorted(values.items())))


MAX_COUNT = 10_000_000  # beyond any budget or core count, and within MetaSchedule's int32


def _count(value: Any, key: str, fail, minimum: int = 1) -> int:
    """A whole number (YAML's `true` and `3.9` are not) in [minimum, MAX_COUNT]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise fail(key, f"must be a whole number from {minimum} to {MAX_COUNT}, not {value!r}")
    return value


def _string(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not value:
        raise fail(key, "must be a non-empty string")
    return value


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
    _reject_unknown(raw, TARGET_KEYS, "target.", fail)
    if raw.get("kind") != "llvm":
        raise fail("target.kind", "must be 'llvm' (CPU device classes only)")
    for key in ("mtriple", "mcpu"):
        if not isinstance(raw.get(key), str):
            raise fail(f"target.{key}", "is missing")
    mattr = raw.get("mattr", [])
    if not isinstance(mattr, list) or not all(isinstance(a, str) and a[:1] in "+-" and a[1:]
                                              for a in mattr):
        raise fail("target.mattr", "must be a list of LLVM features like ['+neon']")
    if "num-cores" in raw:
        _count(raw["num-cores"], "target.num-cores", fail)
    from tvm.target import codegen

    if not codegen.llvm_is_valid_cpu(raw["mcpu"], raw["mtriple"]):
        raise fail("target.mcpu", f"names a CPU '{raw['mcpu']}' that LLVM does not know for "
                                  f"{raw['mtriple']} (a typo?)")
    return dict(raw)


def detect_host_target(cpuinfo: Path | None = None) -> dict[str, Any]:
    """This machine's CPU as an LLVM target: the newest CPU model whose extensions it has."""
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    triple = f"{os.uname().machine}-linux-gnu"
    if triple.startswith("x86_64"):
        cpu = _best_x86_model(cpu, _cpuinfo_flags(cpuinfo))
    return {"kind": "llvm", "mtriple": triple, "mcpu": cpu}


def runs_target(target: dict[str, Any], cpuinfo: Path | None = None) -> bool:
    """Whether this machine's CPU executes every instruction code built for `target` may use:
    the same architecture, and every x86 extension the target's CPU model (and mattr) implies
    reported in `cpuinfo`."""
    import tvm
    from tvm.target import codegen

    if not str(target.get("mtriple", "")).startswith(os.uname().machine):
        return False
    if not str(target["mtriple"]).startswith("x86_64"):
        return target.get("mcpu") == detect_host_target(cpuinfo)["mcpu"]
    flags = _cpuinfo_flags(cpuinfo)
    implied = codegen.llvm_get_cpu_features(tvm.target.Target(
        {k: v for k, v in target.items() if k in ("kind", "mtriple", "mcpu", "mattr")}))
    return bool(flags) and _has_every_extension(implied, flags)


def _has_every_extension(implied, flags: set[str]) -> bool:
    """Every x86 extension in LLVM's `implied` features is among the /proc/cpuinfo `flags`."""
    return all(llvm not in implied or flag in flags for flag, llvm in _X86_FEATURES.items())


def _best_x86_model(cpu: str, flags: set[str]) -> str:
    import tvm
    from tvm.target import codegen

    if not flags:
        return cpu
    for model in (cpu, *_X86_MODELS):
        implied = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": model}))
        if _has_every_extension(implied, flags):
            return model
    return "x86-64"


def _cpuinfo_flags(cpuinfo: Path | None = None) -> set[str]:
    """The CPU's feature flags as the kernel reports them (CPUINFO unless told otherwise: tests
    point it at a fake file to stand for another CPU)."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()
