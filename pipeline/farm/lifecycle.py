"""The device farm: a TVM tracker plus one RPC server per board of the inventory.

    python -m rpc.farm up      --inventory farm.yaml   start the tracker and every board
    python -m rpc.farm status  --inventory farm.yaml   per class: free/busy/dead/quarantined
    python -m rpc.farm watch   --inventory farm.yaml   restart dead boards until Ctrl-C
    python -m rpc.farm down    --inventory farm.yaml   stop everything `up` started

What was started (PIDs, ports, failures) is kept in a state file, so each command can run from
a fresh shell. Boards over SSH get our board server pushed by SFTP and started detached; local
boards (emulated aarch64 ones under qemu, or x86 ones) are child processes of their own session.
A board whose server died is restarted; one that dies `max_restarts` times within `window_s`
is quarantined (stopped, and left out until `up` is run again)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.base.background import every
from pipeline.base.errors import UserError
from pipeline.base.paths import BOARD_SCRIPTS, BUILD_ROOT
from pipeline.farm import emulated, modeled, ssh
from pipeline.farm.inventory import Board, Inventory
from pipeline.farm.processes import kill_group, local_alive, spawn, start_time
from pipeline.farm.tracker import (
    TrackerAddress,
    free_port,
    port_is_free,
    tracker_summary,
    wait_for_port,
)

log = logging.getLogger(__name__)

BOARD_SERVER = BOARD_SCRIPTS / "board_server.py"
STATE_ROOT = BUILD_ROOT / "farm"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_OPEN_WARNING = ("{what} listens on {where}. TVM RPC has no authentication: anyone who can "
                 "reach it or a board can run code there. Keep the farm on a network you trust.")


@dataclass
class BoardState:
    pid: int
    port: int
    started: float
    log: str
    failures: list[float] = field(default_factory=list)
    quarantined: bool = False
    # Seen registered since its start. A crashed session can kill the server's listening
    # thread but not its process: registered once and gone now means dead, alive or not.
    registered_once: bool = False
    identity: int | None = None  # start time of a local board's process; None over SSH


@dataclass
class FarmState:
    tracker_pid: int | None = None
    tracker_started: int | None = None  # its start time (pipeline.farm.processes)
    tracker_port: int | None = None
    boards: dict[str, BoardState] = field(default_factory=dict)


@dataclass(frozen=True)
class BoardStatus:
    name: str
    key: str
    where: str
    state: str  # up | starting | dead | quarantined | stopped
    emulated: bool
    modeled: bool = False


class Farm:
    """Lifecycle of the tracker and the boards of one inventory; state in `state_dir`."""

    def __init__(self, inventory: Inventory, state_dir: Path, accept_new_host_key: bool = False):
        self.inventory, self.state_dir = inventory, state_dir
        self.accept_new_host_key = accept_new_host_key
        self.state = self._load_state()
        self._lock = threading.RLock()

    @property
    def address(self) -> TrackerAddress:
        port = self.state.tracker_port or self.inventory.tracker.port
        host = self.inventory.tracker.host
        return TrackerAddress("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)

    # -- up / down -------------------------------------------------------------------------

    def up(self, wait: bool = True) -> None:
        with self._lock:
            fresh = not self._tracker_alive()
            try:
                # Boards start while the tracker does (each is a Python importing TVM, seconds);
                # a board waits for the tracker's port before it registers.
                starting_tracker = self._start_tracker()
                for board in self.inventory.boards:
                    current = self.state.boards.get(board.name)
                    if current is None or current.quarantined or not self._alive(board, current):
                        self._start_board(board, failures=[])
                if starting_tracker:
                    self._await_tracker()
            except BaseException:
                if fresh:  # leave nothing half-started behind
                    self.down()
                raise
            finally:
                if self.state.tracker_pid:
                    self._save_state()
        if wait:
            self.wait_until_registered()

    def down(self) -> None:
        with self._lock:
            for name, state in list(self.state.boards.items()):
                with contextlib.suppress(UserError):
                    self._stop_board(self._board(name), state)
                del self.state.boards[name]
            if self.state.tracker_pid and not kill_group(self.state.tracker_pid,
                                                         self.state.tracker_started):
                log.warning(f"the tracker's PID {self.state.tracker_pid} is no longer the "
                            f"process this farm started; left alone")
            self.state = FarmState()
            with contextlib.suppress(FileNotFoundError):
                self._state_path.unlink()

    def wait_until_registered(self, timeout_s: float | None = None) -> None:
        """Block until every started board is registered; dead ones are restarted."""
        timeout_s = timeout_s or self.inventory.health.start_timeout_s * 2
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.status()
            pending = [s.name for s in statuses if s.state in ("starting", "dead")]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise UserError(f"Boards {', '.join(pending)} did not register with the tracker "
                                f"at {self.address} within {timeout_s:.0f} s; see their logs "
                                f"({self.state_dir}) and `python -m rpc.farm status`.")
            self.heal()
            time.sleep(0.25)

    # -- health ----------------------------------------------------------------------------

    def status(self) -> list[BoardStatus]:
        registered = self._registered()
        statuses = []
        for board in self.inventory.boards:
            state = self.state.boards.get(board.name)
            if state is None:
                label = "stopped"
            elif state.quarantined:
                label = "quarantined"
            elif self._registered_port(board, state) in registered:
                label = "up"
                if not state.registered_once:
                    state.registered_once = True
                    self._save_state()
            elif (not state.registered_once and self._alive(board, state)
                  and time.time() - state.started < self.inventory.health.start_timeout_s):
                label = "starting"
            else:
                label = "dead"
            statuses.append(BoardStatus(board.name, board.key, board.where, label, board.emulated,
                                        board.modeled))
        return statuses

    def heal(self) -> list[str]:
        """Restart dead boards; quarantine those that died too often. Returns what it did."""
        events = []
        with self._lock:
            for status in self.status():
                if status.state != "dead":
                    continue
                board, state = self._board(status.name), self.state.boards[status.name]
                now = time.time()
                health = self.inventory.health
                failures = [t for t in state.failures if now - t < health.window_s] + [now]
                with contextlib.suppress(UserError):
                    self._stop_board(board, state)
                if len(failures) > health.max_restarts:
                    state.failures, state.quarantined = failures, True
                    events.append(f"board {board.name} died {len(failures)} times within "
                                  f"{health.window_s:.0f} s: quarantined (log: {state.log})")
                else:
                    try:
                        self._start_board(board, failures)
                        events.append(f"board {board.name} was dead: restarted "
                                      f"({len(failures)} of {health.max_restarts} restarts)")
                    except UserError as err:
                        state.failures = failures
                        events.append(f"board {board.name} is dead and did not restart: {err}")
            self._save_state()
        for event in events:
            log.info(f"farm: {event}")
        return events

    @contextlib.contextmanager
    def watching(self, interval_s: float = 5.0) -> Iterator[None]:
        """Heal in a background thread for the duration of the block."""
        def heal_quietly() -> None:
            with contextlib.suppress(UserError, OSError, RuntimeError):
                self.heal()

        with every(interval_s, heal_quietly, "farm-watch"):
            yield

    def kill_board(self, name: str) -> None:
        """Kill a board's server the hard way, as a crash would (used to test health)."""
        board, state = self._board(name), self.state.boards[name]
        self._stop_board(board, state)

    # -- internals -------------------------------------------------------------------------

    def _tracker_alive(self) -> bool:
        return bool(self.state.tracker_pid) and local_alive(self.state.tracker_pid,
                                                             self.state.tracker_started)

    def _start_tracker(self) -> bool:
        """Spawn the tracker unless it runs; True when it was spawned (`_await_tracker` next)."""
        cfg = self.inventory.tracker
        if self._tracker_alive():
            return False
        if cfg.host not in LOOPBACK:
            log.warning(_OPEN_WARNING.format(what="the tracker", where=f"{cfg.host}:{cfg.port}"))
        port = cfg.port or free_port()
        if not port_is_free(cfg.host, port):
            raise UserError(f"Port {port} on {cfg.host} is already in use, so the farm's tracker "
                            f"cannot listen there (another farm? `python -m rpc.farm status`). "
                            f"Stop what holds it or give the inventory another tracker.port.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid = spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", cfg.host,
                      "--port", str(port), "--port-end", str(port + 1), "--silent"],
                     self.state_dir / "tracker.log")
        self.state.tracker_pid, self.state.tracker_port = pid, port
        self.state.tracker_started = start_time(pid)
        return True

    def _await_tracker(self) -> None:
        cfg, port, pid = self.inventory.tracker, self.state.tracker_port, self.state.tracker_pid
        try:
            wait_for_port(self.address.host, port, timeout_s=30)
        except TimeoutError:
            raise UserError(f"The tracker did not start on {cfg.host}:{port} (port in use?); see "
                            f"{self.state_dir / 'tracker.log'}.") from None
        log.info(f"tracker on {cfg.host}:{port}, pid {pid}")

    def _start_board(self, board: Board, failures: list[float]) -> None:
        tracker = f"{self.inventory.tracker.address_for_boards}:{self.address.port}"
        args = ["--tracker", tracker, "--key", board.key, "--name", board.name]
        args += ["--emulated"] if board.emulated else []
        args += ["--modeled", modeled.label(board.device)] if board.modeled else []
        # As many TVM threads as the class has cores (on this machine, no more than it has):
        # TVM's default on x86 is half the logical CPUs, one thread on a 2-vCPU machine, so
        # tuning and verification would time what no user runs. The timing model models one
        # core.
        threads = board.device.cores if board.ssh else min(board.device.cores,
                                                            os.cpu_count() or 1)
        args += ["--threads", str(1 if board.modeled else threads)]
        if board.ssh is None:
            port = board.rpc_port or free_port()
            if board.modeled:
                python = str(modeled.require_ready(board.device))
            elif board.emulated:
                python = str(emulated.require_ready(board.device.emulated_cpu or "cortex-a53"))
            else:
                python = sys.executable
            log_path = self.state_dir / f"{board.name}.log"
            pid = spawn([python, str(BOARD_SERVER), *args, "--host", "127.0.0.1",
                         "--port", str(port)], log_path)
            log_text, identity = str(log_path), start_time(pid)
        else:
            port, access = board.rpc_port or 9090, board.ssh
            with ssh.session(access, self.accept_new_host_key) as remote:
                remote.check(f"mkdir -p -- {shlex.quote(access.workdir)}",
                             "creating the board's work dir")
                remote.push(BOARD_SERVER, f"{access.workdir}/{BOARD_SERVER.name}")
                remote.check(f"{shlex.quote(access.python)} -c 'import tvm'",
                             "importing TVM on the board "
                             f"(install it there: {access.python} -m pip install "
                             f"'apache-tvm[rpc]==0.27.0.post1' 'apache-tvm-ffi==0.1.14.post1')",
                             timeout_s=120)
                if access.bind in ("0.0.0.0", "::"):
                    log.warning(_OPEN_WARNING.format(what=f"board {board.name}'s RPC server",
                                                     where=f"{access.bind}:{port}"))
                pid = remote.start_detached(access.workdir, [
                    access.python, BOARD_SERVER.name, *args, "--host", access.bind,
                    "--port", str(port)], "board.log")
            log_text, identity = f"{board.where}:{access.workdir}/board.log", None
        self.state.boards[board.name] = BoardState(pid, port, time.time(), log_text, failures,
                                                   identity=identity)
        log.info(f"board {board.name} ({board.key}) starting on {board.where}, pid {pid}")

    def _stop_board(self, board: Board, state: BoardState) -> None:
        if board.ssh is None:
            if not kill_group(state.pid, state.identity):
                log.warning(f"board {board.name}'s PID {state.pid} is no longer the process "
                            f"this farm started; left alone")
            return
        with ssh.session(board.ssh, self.accept_new_host_key) as remote:
            remote.stop(state.pid)

    def _alive(self, board: Board, state: BoardState) -> bool:
        if board.ssh is None:
            return local_alive(state.pid, state.identity)
        try:
            with ssh.session(board.ssh, self.accept_new_host_key) as remote:
                return remote.is_alive(state.pid)
        except UserError:
            return False

    def _registered(self) -> set[tuple[str, int]]:
        summary = tracker_summary(self.address)
        return {(_resolve(s["addr"][0]), int(s["addr"][1]))
                for s in summary.get("server_info", []) if s.get("addr")}

    def _registered_port(self, board: Board, state: BoardState) -> tuple[str, int]:
        host = "127.0.0.1" if board.ssh is None else board.ssh.host
        return _resolve(host), state.port

    def _board(self, name: str) -> Board:
        return self.inventory.board(name)

    @property
    def _state_path(self) -> Path:
        return self.state_dir / "state.json"

    def _load_state(self) -> FarmState:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return FarmState()
        except (OSError, ValueError) as err:
            raise UserError(f"{self._state_path} is unreadable ({err}); stop the farm's "
                            f"processes by hand and delete the file.") from None
        try:
            boards = {str(name): BoardState(**b) for name, b in raw.get("boards", {}).items()}
            state = FarmState(raw.get("tracker_pid"), raw.get("tracker_started"),
                              raw.get("tracker_port"), boards)
            if not all(isinstance(v, int | None) and not isinstance(v, bool) for v in
                       (state.tracker_pid, state.tracker_port, state.tracker_started,
                        *(b.pid for b in boards.values()), *(b.port for b in boards.values()))):
                raise TypeError("PIDs and ports must be whole numbers")
        except (AttributeError, TypeError) as err:
            raise UserError(f"{self._state_path} is not a farm state file ({err}); stop the "
                            f"farm's processes by hand and delete the file.") from None
        return state

    def _save_state(self) -> None:
        with self._lock:  # the watching thread saves too
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n")
            tmp.replace(self._state_path)


def class_counts(farm: Farm, statuses: list[BoardStatus]) -> dict[str, dict[str, int]]:
    """Per device class key: free, busy, starting, dead, quarantined, stopped."""
    queue = tracker_summary(farm.address).get("queue_info", {})
    counts: dict[str, dict[str, int]] = {}
    for s in statuses:
        row = counts.setdefault(s.key, dict.fromkeys(
            ("free", "busy", "starting", "dead", "quarantined", "stopped"), 0))
        row["busy" if s.state == "up" else s.state] += 1
    for key, row in counts.items():
        free = min(int(queue.get(key, {}).get("free", 0)), row["busy"])
        row["free"], row["busy"] = free, row["busy"] - free
    return counts


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host
