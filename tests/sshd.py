"""A private OpenSSH server on loopback for the SSH tests: fresh keys, key auth only."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.farm.inventory import SshAccess
from pipeline.farm.tracker import free_port, wait_for_port


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    user: str
    user_key: Path
    host_key_line: str  # known_hosts line for this server
    folder: Path

    def access(self, known_hosts: Path, python: str = "/usr/bin/python3",
               workdir: str | None = None) -> SshAccess:
        return SshAccess(host=self.host, user=self.user, key=self.user_key, python=python,
                         port=self.port, workdir=workdir or str(self.folder / "board"),
                         known_hosts=known_hosts, bind="127.0.0.1")

    def known_hosts(self, path: Path) -> Path:
        path.write_text(self.host_key_line + "\n")
        return path


@contextlib.contextmanager
def running_sshd(folder: Path) -> Iterator[Sshd]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        raise RuntimeError("sshd is missing: apt-get install openssh-server (.ci/run does)")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "PermitRootLogin prohibit-password", "StrictModes no",
        "Subsystem sftp internal-sftp", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
        key_type, key_b64 = (folder / "host_key.pub").read_text().split()[:2]
        yield Sshd("127.0.0.1", port, getpass.getuser(), folder / "user_key",
                   f"[127.0.0.1]:{port} {key_type} {key_b64}", folder)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
