"""Local processes of the farm: started in their own session, checked, stopped as a group.

A PID alone does not prove a process is ours (PIDs are reused after a reboot or a long time),
so each is recorded with its start time (/proc/PID/stat) and checked against it before it is
counted alive or killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def spawn(cmd: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Own session: the tracker and servers fork helpers that must die with them.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True).pid


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22, after the command in ()


def is_ours(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started


def kill_descendants(pid: int) -> None:
    """SIGKILL every process below `pid` (found through /proc's parent links): what a process
    that must leave at once started, such as MetaSchedule's builder workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)


def local_alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (and, given its recorded start time, is still the process we
    started)."""
    if started is not None and not is_ours(pid, started):
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own dead children (no zombies)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill 0 where PID 1 does not reap (containers)
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def kill_group(pid: int, started: int | None) -> bool:
    """Stop the process group of `pid` if `pid` is the process we started; False if it was not
    (then nothing is signalled)."""
    if not is_ours(pid, started):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and local_alive(pid):
            time.sleep(0.1)
        if not local_alive(pid):
            return True
    return True
