"""Modeled aarch64 boards: an emulated board whose qemu runs our timing model of the class's
core (rpc/timing_model.c, a TCG plugin), so that its time evaluator reports a modeled latency
that is the same on every run and every machine (to ~0.03% across sessions of one board).

The plugin is compiled here, once per version of its source, with this machine's C compiler;
it loads only into Debian's dynamically linked `qemu-aarch64` (package qemu-user: the static
build cannot load plugins). One core is modeled: the board runs TVM with one thread.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.base.devices import DeviceConfig
from pipeline.base.errors import UserError
from pipeline.base.paths import BOARD_SCRIPTS
from pipeline.farm import emulated

log = logging.getLogger(__name__)

PLUGIN_SOURCE = BOARD_SCRIPTS / "timing_model.c"
QEMU = "qemu-aarch64"
APT_HINT = "apt-get install qemu-user gcc"


def model_version() -> int:
    """The version the plugin stamps on its figures (MODEL_VERSION in its source)."""
    found = re.search(r"^#define MODEL_VERSION (\d+)$", PLUGIN_SOURCE.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{PLUGIN_SOURCE} defines no MODEL_VERSION")
    return int(found.group(1))


def label(device: DeviceConfig) -> str:
    """How figures from the model are labelled: 'modeled (Cortex-A53 model v1)'."""
    return f"modeled ({require_model(device).core} model v{model_version()})"


def require_model(device: DeviceConfig):
    if device.timing_model is None:
        raise UserError(f"Device class '{device.name}' has no timing_model section in "
                        f"{device.source}, so it has no modeled boards. Use emulated boards "
                        f"(correctness only) or real ones.")
    return device.timing_model


def plugin(root: Path = emulated.BOARDS_ROOT) -> Path:
    """The compiled plugin for the current source (compiled on first use)."""
    source = PLUGIN_SOURCE.read_bytes()
    path = root / f"timing_model-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if path.is_file():
        return path
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise UserError(f"No C compiler to build the timing model; {APT_HINT}")
    root.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.so")
    done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall",
                           "-o", str(partial), str(PLUGIN_SOURCE)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"Compiling {PLUGIN_SOURCE} failed:\n{done.stderr.strip()[-2000:]}")
    partial.replace(path)
    log.info(f"timing model compiled: {path}")
    return path


def plugin_argument(device: DeviceConfig, root: Path = emulated.BOARDS_ROOT) -> str:
    """qemu's -plugin value: the library and the class's parameters."""
    model = require_model(device)
    return ",".join([str(plugin(root)), *(f"{k}={v}" for k, v in model.parameters)])


def require_ready(device: DeviceConfig, root: Path = emulated.BOARDS_ROOT) -> Path:
    """The modeled board's Python for `device`: a launcher that runs the board's Python under
    qemu with the timing model, with address-space randomization off (cache sets depend on
    addresses: the same run must give the same figure)."""
    if shutil.which(QEMU) is None:
        raise UserError(f"'{QEMU}' (dynamically linked, loads TCG plugins) is missing; modeled "
                        f"boards need: {APT_HINT}")
    rootfs = emulated.rootfs_dir(root)
    cpu = device.emulated_cpu or "cortex-a53"
    if not emulated.is_ready(root):
        emulated.require_ready(cpu, root)
    prefix = emulated.board_prefix(cpu, root)
    argument = plugin_argument(device, root)
    path = root / f"python-modeled-{device.name}"
    script = (f"#!/bin/sh\n# Modeled {require_model(device).core} board Python (qemu-user + "
              f"rpc/timing_model.c), made by pipeline/farm/modeled.py\n"
              f"export QEMU_CPU={cpu} QEMU_LD_PREFIX={prefix} PYTHONHASHSEED=0\n"
              f"exec setarch \"$(uname -m)\" -R {shutil.which(QEMU)} -plugin {argument} "
              f"{rootfs}/usr/bin/{emulated.BOARD_PYTHON} \"$@\"\n")
    if not path.is_file() or path.read_text() != script:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(path)
    emulated.ensure_binfmt()  # the server's helper processes start through binfmt
    return path
