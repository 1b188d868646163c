"""The farm's inventory: one YAML file listing the tracker and the boards, validated at load.

    tracker: {host: 127.0.0.1, port: 9190}        # advertise: address boards reach it at
    health: {max_restarts: 3, window_s: 600, start_timeout_s: 120}
    boards:
      - name: pi-1
        class: rpi4                                # a device class from device_configs/
        ssh: {host: 192.168.1.20, user: pi, key: ~/.ssh/id_ed25519, python: /usr/bin/python3}
      - name: a53-emu-1
        class: arm-a53
        emulated: true                             # TVM's RPC server under qemu on this machine
        timing: modeled                            # timed by the class's timing model

A board with `ssh` is reached over SSH; one without runs on this machine (aarch64 classes under
qemu, which it must say with `emulated: true`). `emulated: true` on an SSH board labels its
timings as not real too. `timing: modeled` (local emulated boards of a class with a
`timing_model`) runs qemu with the model of the class's core (pipeline.farm.modeled): such a
board's timings are modeled figures, labelled so; `timing: emulated` checks results only.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.base.devices import DeviceConfig, device_class
from pipeline.base.errors import UserError
from pipeline.base.files import plain_name, read_yaml

DEFAULT_TRACKER_PORT = 9190
DEFAULT_RPC_PORT = 9090
_TOP = frozenset({"tracker", "health", "boards"})
_TRACKER = frozenset({"host", "port", "advertise"})
_HEALTH = frozenset({"max_restarts", "window_s", "start_timeout_s"})
_BOARD = frozenset({"name", "class", "ssh", "emulated", "rpc_port", "timing"})
_SSH = frozenset({"host", "port", "user", "key", "python", "workdir", "known_hosts", "bind"})


@dataclass(frozen=True)
class TrackerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_TRACKER_PORT
    advertise: str | None = None  # the address boards connect to; default: host

    @property
    def address_for_boards(self) -> str:
        return self.advertise or self.host


@dataclass(frozen=True)
class Health:
    max_restarts: int = 3  # restarts within window_s before a board is quarantined
    window_s: float = 600.0
    start_timeout_s: float = 120.0  # a started board that has not registered by then is dead

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("max_restarts must be >= 0, window_s and start_timeout_s > 0")


@dataclass(frozen=True)
class SshAccess:
    host: str
    user: str
    key: Path
    python: str  # absolute path of the board's Python that has TVM installed
    port: int = 22
    workdir: str = "edge-tvm-board"  # relative to the login directory, or absolute
    known_hosts: Path = Path("~/.ssh/known_hosts").expanduser()
    bind: str = ""  # address the board's RPC server listens on (inventory default: host)


@dataclass(frozen=True)
class Board:
    name: str
    device: DeviceConfig
    ssh: SshAccess | None
    emulated: bool
    rpc_port: int | None  # None: any free port (local boards)
    modeled: bool = False  # emulated, and timed by the class's timing model

    @property
    def key(self) -> str:
        return self.device.rpc_key

    @property
    def where(self) -> str:
        if self.ssh is None:
            if self.modeled:
                return "this machine (qemu, modeled timing)"
            return "this machine (qemu)" if self.emulated else "this machine"
        return f"{self.ssh.user}@{self.ssh.host}:{self.ssh.port}"


@dataclass(frozen=True)
class Inventory:
    tracker: TrackerConfig
    health: Health
    boards: tuple[Board, ...]
    source: Path | None = None

    def board(self, name: str) -> Board:
        for board in self.boards:
            if board.name == name:
                return board
        raise UserError(f"No board named '{name}' in {self.source or 'the inventory'}; it lists: "
                        f"{', '.join(b.name for b in self.boards) or 'none'}.")


def load_inventory(path: Path) -> Inventory:
    if not path.is_file():
        raise UserError(f"Inventory {path} does not exist. Write one (see the README: setting up "
                        f"a farm) or pass --inventory FILE.")
    return parse_inventory(read_yaml(path, "inventory"), path)


def parse_inventory(raw: Any, path: Path | None = None) -> Inventory:
    where = str(path or "inventory")

    def fail(key: str, problem: str) -> UserError:
        return UserError(f"{where}: '{key}' {problem}. Fix the inventory and run again.")

    if not isinstance(raw, dict):
        raise fail("(top level)", "must be a mapping with tracker, health and boards")
    _known(raw, _TOP, "", fail)
    tracker_raw = _mapping(raw.get("tracker", {}), "tracker", fail)
    _known(tracker_raw, _TRACKER, "tracker.", fail)
    tracker = TrackerConfig(str(tracker_raw.get("host", "127.0.0.1")),
                            _port(tracker_raw.get("port", DEFAULT_TRACKER_PORT), "tracker.port",
                                  fail), tracker_raw.get("advertise"))
    if tracker.host in ("0.0.0.0", "::") and not tracker.advertise:
        raise fail("tracker.advertise", f"is needed when the tracker binds {tracker.host}: the "
                                        f"address of this machine that the boards can reach")
    health_raw = _mapping(raw.get("health", {}), "health", fail)
    _known(health_raw, _HEALTH, "health.", fail)
    try:
        health = Health(**health_raw)
    except (TypeError, ValueError) as err:
        raise fail("health", f"is invalid: {err}") from None
    boards_raw = raw.get("boards")
    if not isinstance(boards_raw, list) or not boards_raw:
        raise fail("boards", "must be a non-empty list of boards")
    boards = tuple(_board(b, i, fail) for i, b in enumerate(boards_raw))
    names = [b.name for b in boards]
    for name in names:
        if names.count(name) > 1:
            raise fail(f"boards[name={name}]", "appears twice; board names must be unique")
    for key in {b.key for b in boards}:
        kinds = {b.modeled for b in boards if b.key == key}
        if len(kinds) > 1:
            raise fail("boards", f"mixes modeled and other boards under the key '{key}': a "
                                 f"tuning run takes any board of a key, and modeled figures "
                                 f"must not be ranked against measured or emulated ones. Give "
                                 f"every {key} board the same timing")
    places = [(b.ssh.host, b.rpc_port) for b in boards if b.ssh is not None]
    for place in places:
        if places.count(place) > 1:
            raise fail("boards", f"has two boards on {place[0]} with rpc_port {place[1]}; give "
                                 f"each board on one host its own rpc_port")
    return Inventory(tracker, health, boards, path)


def _board(raw: Any, index: int, fail) -> Board:
    entry = f"boards[{index}]"
    raw = _mapping(raw, entry, fail)
    _known(raw, _BOARD, f"{entry}.", fail)
    for key in ("name", "class"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise fail(f"{entry}.{key}", "is missing")
    plain_name(raw["name"], f"{entry}.name")
    device = device_class(raw["class"])
    emulated = raw.get("emulated", False)
    if not isinstance(emulated, bool):
        raise fail(f"{entry}.emulated", "must be true or false")
    ssh = _ssh(raw["ssh"], f"{entry}.ssh", fail) if "ssh" in raw else None
    if ssh is None and device.emulated_here and not emulated:
        raise fail(f"{entry}", f"is a local {device.name} board on an {platform.machine()} "
                               f"machine: add `emulated: true` (qemu) or an `ssh:` section")
    if ssh is None and emulated and not device.is_aarch64:
        raise fail(f"{entry}.emulated", "is only for aarch64 classes; x86 boards run natively")
    timing = raw.get("timing", "emulated" if emulated else "measured")
    if timing not in ("measured", "emulated", "modeled"):
        raise fail(f"{entry}.timing", "must be measured, emulated or modeled")
    if timing == "modeled" and (ssh is not None or not emulated):
        raise fail(f"{entry}.timing", "modeled is for local emulated boards (emulated: true, "
                                      "no ssh)")
    if timing == "modeled" and device.timing_model is None:
        raise fail(f"{entry}.timing", f"is modeled, but class {device.name} has no "
                                      f"timing_model in {device.source}")
    if timing == "emulated" and not emulated:
        raise fail(f"{entry}.timing", "is emulated on a board without emulated: true")
    default_port = DEFAULT_RPC_PORT if ssh is not None else None
    rpc_port = raw.get("rpc_port", default_port)
    if rpc_port is not None:
        rpc_port = _port(rpc_port, f"{entry}.rpc_port", fail)
    return Board(raw["name"], device, ssh, emulated, rpc_port, modeled=timing == "modeled")


def _ssh(raw: Any, entry: str, fail) -> SshAccess:
    raw = _mapping(raw, entry, fail)
    _known(raw, _SSH, f"{entry}.", fail)
    for key in ("host", "user", "key", "python"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise fail(f"{entry}.{key}", "is missing")
    if not PurePosixPath(raw["python"]).is_absolute():
        raise fail(f"{entry}.python", "must be an absolute path (login shells may change PATH), "
                                      "e.g. /usr/bin/python3")
    key = Path(raw["key"]).expanduser()
    if not key.is_file():
        raise fail(f"{entry}.key", f"names {key}, which does not exist")
    for key_name in ("workdir", "known_hosts", "bind"):
        if key_name in raw and (not isinstance(raw[key_name], str) or not raw[key_name]):
            raise fail(f"{entry}.{key_name}", "must be a non-empty string")
    known_hosts = Path(raw.get("known_hosts", "~/.ssh/known_hosts")).expanduser()
    # The board's RPC server listens on the address the farm reaches it at, not on every
    # interface: TVM RPC runs any code it is sent, for anyone who reaches the port.
    return SshAccess(host=raw["host"], user=raw["user"], key=key, python=raw["python"],
                     port=_port(raw.get("port", 22), f"{entry}.port", fail),
                     workdir=raw.get("workdir", "edge-tvm-board"), known_hosts=known_hosts,
                     bind=raw.get("bind", raw["host"]))


def _mapping(raw: Any, key: str, fail) -> dict:
    if not isinstance(raw, dict):
        raise fail(key, "must be a mapping")
    return raw


def _known(raw: dict, known: frozenset[str], prefix: str, fail) -> None:
    for key in raw:
        if key not in known:
            raise fail(f"{prefix}{key}", f"is unknown (known keys: {', '.join(sorted(known))})")


def _port(value: Any, key: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise fail(key, "must be a port number (1-65535)")
    return value
