"""Emulated aarch64 boards: TVM's real RPC server on an arm64 Debian root filesystem, run by
qemu-user on this x86 machine.

Set up once with `python -m rpc.emulated setup` (needs the Debian packages
qemu-user-static and mmdebstrap, and root the first time to register qemu with binfmt_misc).
Nothing is emulated while setting up: mmdebstrap only unpacks the arm64 packages and the host's
pip fetches the aarch64 wheels. An emulated board computes the right results, but its timings
are far off a real board's and rank schedules differently: they are never reported as
performance."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.base.errors import UserError
from pipeline.base.paths import BUILD_ROOT

log = logging.getLogger(__name__)

BOARDS_ROOT = BUILD_ROOT / "boards"


DEBIAN_SUITE = "bookworm"


BOARD_PYTHON = "python3.11"


# The board gets the same TVM as the host: the RPC protocol and module format must match.
BOARD_PACKAGES = ("apache-tvm[rpc]==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy")


READY_MARK = ".board-ready"


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")


APT_HINT = "apt-get install qemu-user-static qemu-user gcc mmdebstrap g++-aarch64-linux-gnu"


def rootfs_dir(root: Path = BOARDS_ROOT) -> Path:
    return root / "arm64-rootfs"


def board_python(cpu: str, root: Path = BOARDS_ROOT) -> Path:
    """The emulated board's Python for CPU model `cpu`: a launcher script that any caller
    (our farm, or sshd on a test board) runs as an absolute path."""
    return root / f"python-{cpu}"


def is_ready(root: Path = BOARDS_ROOT) -> bool:
    return (rootfs_dir(root) / READY_MARK).is_file()


def require_ready(cpu: str, root: Path = BOARDS_ROOT) -> Path:
    """The board Python for `cpu`, setting up the root filesystem first if it is missing."""
    if not is_ready(root):
        log.info(f"setting up the emulated aarch64 board in {root} (once, ~1 min)")
        setup(root)
    ensure_binfmt()
    python = board_python(cpu, root)
    if not python.exists() or "prefix-" not in python.read_text():
        _write_launcher(python, rootfs_dir(root), cpu)
    return python


def setup(root: Path = BOARDS_ROOT) -> Path:
    """Create the arm64 root filesystem with Python and TVM under `root`; idempotent."""
    for tool in ("mmdebstrap", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            raise UserError(f"'{tool}' is missing; emulated boards need: {APT_HINT}")
    ensure_binfmt()
    rootfs = rootfs_dir(root)
    if not (rootfs / READY_MARK).is_file():
        root.mkdir(parents=True, exist_ok=True)
        # Build beside the final path and rename: a half-made filesystem is never used.
        partial = Path(tempfile.mkdtemp(prefix="rootfs-", dir=root))
        try:
            log.info(f"  arm64 Debian {DEBIAN_SUITE} base with {BOARD_PYTHON} (mmdebstrap)")
            _run(["mmdebstrap", "--arch=arm64", "--variant=extract", "--quiet",
                  # root unpacks directly; others need user namespaces (unshare)
                  "--mode=root" if os.geteuid() == 0 else "--mode=unshare",
                  f"--include={BOARD_PYTHON},libstdc++6", DEBIAN_SUITE, str(partial),
                  apt_mirror()])
            log.info(f"  TVM and numpy for aarch64 ({', '.join(BOARD_PACKAGES)})")
            site = partial / "usr" / "local" / "lib" / BOARD_PYTHON / "dist-packages"
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site),
                  "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                  "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:",
                  *BOARD_PACKAGES])
            (partial / READY_MARK).write_text(" ".join(BOARD_PACKAGES) + "\n")
            if rootfs.exists():
                shutil.rmtree(rootfs)
            partial.rename(rootfs)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    for cpu in ("cortex-a53", "cortex-a72"):
        _write_launcher(board_python(cpu, root), rootfs, cpu)
    return rootfs


def add_board_packages(packages: tuple[str, ...], root: Path = BOARDS_ROOT) -> None:
    """Install more aarch64 wheels (e.g. peer runtimes for a benchmark) into the board's root
    filesystem, as setup installs TVM: pip on this machine, nothing emulated. Once per set of
    packages (a mark in the root filesystem says it was done)."""
    if not is_ready(root):
        setup(root)
    mark = rootfs_dir(root) / f".packages-{'-'.join(sorted(packages)).replace('==', '_')}"
    if mark.is_file():
        return
    site = rootfs_dir(root) / "usr" / "local" / "lib" / BOARD_PYTHON / "dist-packages"
    # pip takes a --platform literally: every manylinux level the board's glibc (2.36) runs.
    platforms = [arg for level in ("manylinux_2_28", "manylinux_2_27", "manylinux2014")
                 for arg in ("--platform", f"{level}_aarch64")]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site),
          "--upgrade", *platforms, "--python-version", "3.11", "--implementation", "cp",
          "--abi", "cp311", "--only-binary=:all:", *packages])
    mark.write_text("\n")


def ensure_binfmt() -> None:
    """Let the kernel run aarch64 programs through qemu, so that the board's Python can start
    its own helper processes (the RPC server forks and spawns workers)."""
    if platform.machine() == "aarch64" or (BINFMT_DIR / "qemu-aarch64").exists():
        return
    if not BINFMT_CONF.exists():
        raise UserError(f"{BINFMT_CONF} is missing; emulated boards need: {APT_HINT}")
    if os.geteuid() != 0:
        raise UserError("qemu-aarch64 is not registered with binfmt_misc; once, as root: "
                        f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR}; "
                        f"cat {BINFMT_CONF} > {BINFMT_DIR}/register")
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
    (BINFMT_DIR / "register").write_text(BINFMT_CONF.read_text().strip())


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses: boards get the same packages, offline-safe."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        stanza_uris = [line.split(":", 1)[1].split() for line in path.read_text().splitlines()
                       if line.startswith("URIs:")]
        for uris in stanza_uris:
            for uri in uris:
                if "security" not in uri:
                    return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[2] if parts[1].startswith("[") else parts[1]
    raise UserError("No Debian mirror found in /etc/apt/sources.list.d/*.sources or "
                    "/etc/apt/sources.list; configure apt first.")


# What /proc/cpuinfo says on each part (MIDR part number; HWCAP names the kernel prints).
_CPU_PARTS = {"cortex-a53": ("0xd03", "fp asimd evtstrm crc32 cpuid"),
              "cortex-a55": ("0xd05", "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid "
                                      "asimdrdm lrcpc dcpop asimddp"),
              "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
              "cortex-a76": ("0xd0b", "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid "
                                      "asimdrdm lrcpc dcpop asimddp")}


PREFIX_LAYOUT = "2\n"  # raised when the prefix's contents change: older ones are rebuilt


def board_prefix(cpu: str, root: Path = BOARDS_ROOT) -> Path:
    """The root the board's programs see for `cpu`: the shared arm64 root filesystem, plus a
    /proc/cpuinfo and /sys CPU list of one `cpu` core. qemu-user resolves every absolute path
    under QEMU_LD_PREFIX first; without these, runtimes that read the CPU's identity (ONNX
    Runtime's cpuinfo) read the x86 host's files and crash."""
    rootfs = rootfs_dir(root)
    prefix = root / f"prefix-{cpu}"
    if (prefix / READY_MARK).is_file() and (prefix / READY_MARK).read_text() == PREFIX_LAYOUT:
        return prefix
    partial = Path(tempfile.mkdtemp(prefix=f"prefix-{cpu}-", dir=root))
    for entry in rootfs.iterdir():
        # /tmp and /dev stay the host's: a directory the board creates at run time must be
        # found under the same path by everything that follows symlinks (realpath) or not.
        if entry.name not in ("proc", "sys", "tmp", "dev", READY_MARK):
            (partial / entry.name).symlink_to(entry)
    part, features = _CPU_PARTS.get(cpu, ("0xd03", "fp asimd"))
    (partial / "proc").mkdir()
    (partial / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 4\n\n")
    cpus = partial / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0\n")
    (partial / READY_MARK).write_text(PREFIX_LAYOUT)
    if prefix.exists():
        shutil.rmtree(prefix)
    partial.rename(prefix)
    return prefix


def _write_launcher(path: Path, rootfs: Path, cpu: str) -> None:
    # QEMU_CPU makes an instruction this CPU lacks fail as on the real part; QEMU_LD_PREFIX
    # (not `qemu -L`) is inherited by the children that binfmt starts.
    prefix = board_prefix(cpu, rootfs.parent)
    script = (f"#!/bin/sh\n# Emulated aarch64 {cpu} board Python (qemu-user), made by "
              f"rpc/emulated.py\nexport QEMU_CPU={cpu} QEMU_LD_PREFIX={prefix}\n"
              f"exec {rootfs}/usr/bin/{BOARD_PYTHON} \"$@\"\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    tmp.replace(path)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"'{' '.join(cmd[:3])} ...' failed (exit {done.returncode}):\n"
                        f"{(done.stderr or done.stdout).strip()[-2000:]}")
