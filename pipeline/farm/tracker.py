"""Talking to a TVM RPC tracker: addresses, health, waiting for boards of a device class."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from pipeline.base.errors import UserError


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> TrackerAddress:
    """argparse type for --tracker HOST:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--tracker '{text}' is not HOST:PORT, e.g. 127.0.0.1:9190.")
    return TrackerAddress(host, int(port))


def registered_boards(address: TrackerAddress, key: str) -> int:
    """How many boards of `key` are registered with the tracker (busy ones included)."""
    summary = tracker_summary(address)
    return sum(1 for server in summary.get("server_info", [])
               if str(server.get("key", "")).split(":")[-1] == key)


SUMMARY_TIMEOUT_S = 30.0
_DEFAULT_TIMEOUT = threading.Lock()


def tracker_summary(address: TrackerAddress, timeout_s: float | None = None) -> dict:
    """The tracker's summary, or an error naming the address if it does not answer within
    `timeout_s` (a port that accepts and never answers must not hang a command)."""
    from tvm import rpc

    try:
        # TVM's client retries a refused connection for a minute: a refused probe answers now.
        socket.create_connection((address.host, address.port), timeout=5).close()
        # TVM's tracker client makes its socket inside; the default timeout is the only way in.
        with _DEFAULT_TIMEOUT:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout_s or SUMMARY_TIMEOUT_S)
            try:
                session = rpc.connect_tracker(address.host, address.port)
            finally:
                socket.setdefaulttimeout(previous)
        return session.summary()
    except (OSError, RuntimeError, TimeoutError) as err:
        raise UserError(
            f"The RPC tracker at {address} does not answer ({err}). Check that it runs: "
            f"python -m tvm.exec.query_rpc_tracker --host {address.host} --port {address.port}; "
            f"or leave out --tracker to use an embedded local farm.") from None


def wait_for_boards(address: TrackerAddress, key: str, count: int = 1,
                    timeout_s: float = 120.0) -> int:
    """Block until `count` boards of `key` are registered; an error names the key if none come."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = registered_boards(address, key)
        if found >= count:
            return found
        if time.monotonic() > deadline:
            raise UserError(
                f"No board with key '{key}' registered at the tracker {address} within "
                f"{timeout_s:.0f} s ({found} found). Start boards of that class (python -m "
                f"tvm.exec.query_rpc_tracker lists them) or check the device's rpc_key.")
        time.sleep(0.5)


def wait_for_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
