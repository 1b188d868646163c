"""An embedded farm on this machine: a loopback tracker and RPC servers, as child processes.

With no --tracker, tuning and verification still go through the same RPC path as on a real
farm. Tracker and server each fork helpers, so each runs in its own session and is stopped by
process group; otherwise a helper keeps the port after the parent dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rpc.tracker import TrackerAddress, free_port, wait_for_boards, wait_for_port


def start_tracker(log_dir: Path) -> tuple[subprocess.Popen, TrackerAddress]:
    port = free_port()
    proc = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                   "--port", str(port), "--port-end", str(port + 1)], log_dir / "tracker.log")
    wait_for_port("127.0.0.1", port)
    return proc, TrackerAddress("127.0.0.1", port)


def start_server(tracker: TrackerAddress, key: str, log_path: Path,
                 command: list[str] | None = None, env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """Start a TVM RPC server (by default with this Python) that registers under `key`."""
    port = free_port()
    python = command or [sys.executable]
    return _spawn([*python, "-m", "tvm.exec.rpc_server", "--tracker", str(tracker),
                   "--key", key, "--host", "127.0.0.1", "--port", str(port),
                   "--port-end", str(port + 1)], log_path, env=env)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def local_farm(key: str, boards: int = 1) -> Iterator[TrackerAddress]:
    """A tracker plus `boards` RPC servers on 127.0.0.1 for the duration of the block."""
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="pipeline-farm-") as tmp:
        try:
            tracker_proc, address = start_tracker(Path(tmp))
            procs.append(tracker_proc)
            for i in range(boards):
                procs.append(start_server(address, key, Path(tmp) / f"server{i}.log"))
            wait_for_boards(address, key, boards, timeout_s=60)
            yield address
        finally:
            for proc in reversed(procs):
                stop(proc)


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    finally:
        log.close()
