"""SSH to boards with paramiko: verified host keys, commands, SFTP pushes, detached processes.

Host keys are checked against known_hosts. An unknown key is refused unless the caller opts in
(`--accept-new-host-key`), which records it; a key that differs from the recorded one is always
refused: that is what a man-in-the-middle looks like.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.errors import UserError
from pipeline.farm.inventory import SshAccess

CONNECT_TIMEOUT_S = 15
# A file transfer that moves no byte for this long is a dead link, not a slow one.
TRANSFER_STALL_S = 60
KEEPALIVE_S = 15


@dataclass(frozen=True)
class Completed:
    status: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def session(access: SshAccess, accept_new_host_key: bool = False) -> Iterator[Board]:
    board = connect(access, accept_new_host_key)
    try:
        yield board
    finally:
        board.close()


def connect(access: SshAccess, accept_new_host_key: bool = False) -> Board:
    import paramiko

    client = paramiko.SSHClient()
    if access.known_hosts.is_file():
        client.load_host_keys(str(access.known_hosts))
    client.set_missing_host_key_policy(
        paramiko.AutoAddPolicy() if accept_new_host_key else paramiko.RejectPolicy())
    where = f"{access.user}@{access.host}:{access.port}"
    try:
        client.connect(access.host, port=access.port, username=access.user,
                       key_filename=str(access.key), timeout=CONNECT_TIMEOUT_S,
                       banner_timeout=CONNECT_TIMEOUT_S, auth_timeout=CONNECT_TIMEOUT_S,
                       allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException as err:
        client.close()
        raise UserError(
            f"The host key of {where} is not the one recorded in {access.known_hosts} (got "
            f"{_fingerprint(err.key)}). Someone may be intercepting the connection. If the board "
            f"was reinstalled, remove its old line (ssh-keygen -R '{_known_name(access)}' -f "
            f"{access.known_hosts}) and verify the new key.") from None
    except paramiko.SSHException as err:
        client.close()
        if "not found in known_hosts" in str(err):
            raise UserError(
                f"{where} presented a host key that is not in {access.known_hosts}, so the "
                f"connection was refused. Verify the key's fingerprint on the board (ssh-keygen "
                f"-lf /etc/ssh/ssh_host_ed25519_key.pub), then add it (ssh-keyscan -p "
                f"{access.port} {access.host} >> {access.known_hosts}) or pass "
                f"--accept-new-host-key once to record it.") from None
        raise UserError(f"SSH to {where} failed: {err}. Check the user and key "
                        f"({access.key}) with: ssh -p {access.port} -i {access.key} "
                        f"{access.user}@{access.host} true") from None
    except OSError as err:
        client.close()
        raise UserError(f"Cannot reach {where} over SSH ({err}). Is the board on and sshd "
                        f"running? Try: ssh -p {access.port} {access.user}@{access.host}") from None
    if accept_new_host_key:
        access.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(access.known_hosts))
    # Without keepalives a board that drops off the network leaves reads waiting forever.
    client.get_transport().set_keepalive(KEEPALIVE_S)
    return Board(client, access)


class Board:
    """An open SSH connection to one board."""

    def __init__(self, client, access: SshAccess):
        self.client, self.access = client, access

    @property
    def where(self) -> str:
        return f"{self.access.user}@{self.access.host}:{self.access.port}"

    def close(self) -> None:
        self.client.close()

    def run(self, command: str, timeout_s: float = 60) -> Completed:
        from paramiko import SSHException

        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout_s)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            return Completed(stdout.channel.recv_exit_status(), out, err)
        except (TimeoutError, OSError, EOFError, SSHException) as err:
            raise self._lost(f"running `{command[:80]}`", f"no answer within {timeout_s:g} s"
                             if isinstance(err, TimeoutError) else str(err) or "closed") from None

    def check(self, command: str, what: str, timeout_s: float = 60) -> str:
        done = self.run(command, timeout_s)
        if done.status != 0:
            raise UserError(f"{what} failed on {self.access.host} (exit {done.status}): "
                            f"{(done.stderr or done.stdout).strip()[-1500:]}")
        return done.stdout

    def push(self, local: Path, remote: str) -> None:
        """Copy a file or a folder (recursively) to `remote`, relative to the login dir."""
        with self._sftp(f"copying {local} to {remote}") as sftp:
            if local.is_dir():
                _mkdirs(sftp, remote)
                for path in sorted(local.rglob("*")):
                    target = f"{remote}/{path.relative_to(local).as_posix()}"
                    if path.is_dir():
                        _mkdirs(sftp, target)
                    elif path.is_file():
                        sftp.put(str(path), target)
            else:
                parent = remote.rpartition("/")[0]
                if parent:
                    _mkdirs(sftp, parent)
                sftp.put(str(local), remote)

    def fetch(self, remote: str, local: Path) -> None:
        with self._sftp(f"copying {remote} from the board") as sftp:
            sftp.get(remote, str(local))

    @contextlib.contextmanager
    def _sftp(self, what: str):
        try:
            sftp = self.client.open_sftp()
        except (OSError, EOFError) as err:  # paramiko's SSHException is neither: it propagates
            raise self._lost(what, str(err) or "closed") from None
        sftp.get_channel().settimeout(TRANSFER_STALL_S)
        try:
            yield sftp
        except TimeoutError:
            raise self._lost(what, f"no data moved for {TRANSFER_STALL_S} s") from None
        except EOFError:
            raise self._lost(what, "the connection closed") from None
        finally:
            sftp.close()

    def _lost(self, what: str, why: str) -> UserError:
        return UserError(f"{what} on {self.where} failed: {why}. Is the board still on the "
                         f"network and not overloaded? Try: ssh -p {self.access.port} "
                         f"{self.access.user}@{self.access.host} uptime")

    def start_detached(self, workdir: str, command: list[str], log: str) -> int:
        """Start `command` in its own session so it outlives this connection; its PID is also
        its process group, which `stop` kills whole (the RPC server forks helpers)."""
        line = (f"cd {shlex.quote(workdir)} || exit 1; setsid nohup {shlex.join(command)} "
                f">{shlex.quote(log)} 2>&1 </dev/null & echo $!")
        pid = self.check(line, f"starting {command[0]}").strip()
        if not pid.isdigit():
            raise UserError(f"starting {command[0]} on {self.access.host} printed no PID: {pid}")
        return int(pid)

    def is_alive(self, pid: int) -> bool:
        # A zombie still answers kill -0 where PID 1 does not reap (containers).
        return self.run(f"kill -0 {pid} && ! grep -qs '^State:.*Z' /proc/{pid}/status"
                        ).status == 0

    def stop(self, pid: int) -> None:
        self.run(f"kill -TERM -- -{pid} 2>/dev/null; sleep 1; kill -KILL -- -{pid} 2>/dev/null; "
                 f"true")


def sha256_remote(board: Board, paths: list[str], workdir: str) -> dict[str, str]:
    """sha256 of files on the board, computed there with the board's own Python."""
    script = ("import hashlib,sys\nfor p in sys.argv[1:]:\n"
              "    print(hashlib.sha256(open(p,'rb').read()).hexdigest(), p)\n")
    out = board.check(f"cd {shlex.quote(workdir)} && {shlex.quote(board.access.python)} -c "
                      f"{shlex.quote(script)} {shlex.join(paths)}", "hashing files")
    return {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in out.splitlines() if line}


def _mkdirs(sftp, remote: str) -> None:
    parts = remote.split("/")
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i])
        if not path:
            continue
        try:
            sftp.stat(path)
        except OSError:
            sftp.mkdir(path)


def _known_name(access: SshAccess) -> str:
    return access.host if access.port == 22 else f"[{access.host}]:{access.port}"


def _fingerprint(key) -> str:
    import base64

    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"
