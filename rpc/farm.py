"""The device farm: a TVM tracker plus one RPC server per board of the inventory.

    python -m rpc.farm up      --inventory farm.yaml   start the tracker and every board
    python -m rpc.farm status  --inventory farm.yaml   per class: free/busy/dead/quarantined
    python -m rpc.farm watch   --inventory farm.yaml   restart dead boards until Ctrl-C
    python -m rpc.farm down    --inventory farm.yaml   stop everything `up` started

What was started (PIDs, ports, failures) is kept in a state file, so each command can run from
a fresh shell. Boards over SSH get our board server pushed by SFTP and started detached; local
boards (emulated aarch64 ones under qemu, or x86 ones) are child processes of their own session.
A board whose server died is restarted; one that dies `max_restarts` times within `window_s`
is quarantined (stopped, and left out until `up` is run again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import EXIT_USER_ERROR, UserError
from rpc import emulated
from rpc.inventory import Board, Inventory, load_inventory
from rpc.tracker import TrackerAddress, free_port, tracker_summary, wait_for_port

BOARD_SERVER = Path(__file__).resolve().parent / "board_server.py"
STATE_ROOT = Path(__file__).resolve().parent.parent / "build" / "farm"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


@dataclass
class FarmState:
    tracker_pid: int | None = None
    tracker_port: int | None = None
    boards: dict[str, BoardState] = field(default_factory=dict)


@dataclass(frozen=True)
class BoardStatus:
    name: str
    key: str
    where: str
    state: str  # up | starting | dead | quarantined | stopped
    emulated: bool


class Farm:
    """Lifecycle of the tracker and the boards of one inventory; state in `state_dir`."""

    def __init__(self, inventory: Inventory, state_dir: Path, accept_new_host_key: bool = False,
                 out=None):
        self.inventory, self.state_dir = inventory, state_dir
        self.accept_new_host_key = accept_new_host_key
        self.out = out or sys.stderr
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
            fresh = not (self.state.tracker_pid and _local_alive(self.state.tracker_pid))
            try:
                self._start_tracker()
                for board in self.inventory.boards:
                    current = self.state.boards.get(board.name)
                    if current is None or current.quarantined or not self._alive(board, current):
                        self._start_board(board, failures=[])
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
            if self.state.tracker_pid:
                _kill_group(self.state.tracker_pid)
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
            time.sleep(1.0)

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
            statuses.append(BoardStatus(board.name, board.key, board.where, label, board.emulated))
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
            print(f"farm: {event}", file=self.out, flush=True)
        return events

    @contextlib.contextmanager
    def watching(self, interval_s: float = 5.0) -> Iterator[None]:
        """Heal in a background thread for the duration of the block."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                with contextlib.suppress(UserError, OSError, RuntimeError):
                    self.heal()

        thread = threading.Thread(target=loop, name="farm-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=interval_s + 30)

    def kill_board(self, name: str) -> None:
        """Kill a board's server the hard way, as a crash would (used to test health)."""
        board, state = self._board(name), self.state.boards[name]
        self._stop_board(board, state)

    # -- internals -------------------------------------------------------------------------

    def _start_tracker(self) -> None:
        cfg = self.inventory.tracker
        if self.state.tracker_pid and _local_alive(self.state.tracker_pid):
            return
        if cfg.host not in LOOPBACK:
            print(f"warning: the tracker listens on {cfg.host}:{cfg.port}. TVM RPC has no "
                  f"authentication: anyone who can reach it or a board can run code there. Keep "
                  f"the farm on a network you trust.", file=self.out)
        port = cfg.port or free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", cfg.host,
                      "--port", str(port), "--port-end", str(port + 1), "--silent"],
                     self.state_dir / "tracker.log")
        try:
            wait_for_port(self.address.host, port, timeout_s=30)
        except TimeoutError:
            _kill_group(pid)
            raise UserError(f"The tracker did not start on {cfg.host}:{port} (port in use?); see "
                            f"{self.state_dir / 'tracker.log'}.") from None
        self.state.tracker_pid, self.state.tracker_port = pid, port
        print(f"tracker on {cfg.host}:{port}", file=self.out)

    def _start_board(self, board: Board, failures: list[float]) -> None:
        tracker = f"{self.inventory.tracker.address_for_boards}:{self.address.port}"
        args = ["--tracker", tracker, "--key", board.key, "--name", board.name]
        args += ["--emulated"] if board.emulated else []
        if board.ssh is None:
            port = board.rpc_port or free_port()
            python = (str(emulated.require_ready(board.device.emulated_cpu or "cortex-a53"))
                      if board.emulated else sys.executable)
            log = self.state_dir / f"{board.name}.log"
            pid = _spawn([python, str(BOARD_SERVER), *args, "--host", "127.0.0.1",
                          "--port", str(port)], log)
            log_text = str(log)
        else:
            from rpc import ssh

            port, access = board.rpc_port or 9090, board.ssh
            with ssh.session(access, self.accept_new_host_key) as remote:
                remote.check(f"mkdir -p {access.workdir}", "creating the board's work dir")
                remote.push(BOARD_SERVER, f"{access.workdir}/{BOARD_SERVER.name}")
                remote.check(f"{access.python} -c 'import tvm'", "importing TVM on the board "
                             f"(install it there: {access.python} -m pip install "
                             f"'apache-tvm[rpc]==0.27.0.post1' 'apache-tvm-ffi==0.1.14.post1')",
                             timeout_s=120)
                pid = remote.start_detached(access.workdir, [
                    access.python, BOARD_SERVER.name, *args, "--host", access.bind,
                    "--port", str(port)], "board.log")
            log_text = f"{board.where}:{access.workdir}/board.log"
        self.state.boards[board.name] = BoardState(pid, port, time.time(), log_text, failures)
        print(f"board {board.name} ({board.key}) starting on {board.where}, pid {pid}",
              file=self.out, flush=True)

    def _stop_board(self, board: Board, state: BoardState) -> None:
        if board.ssh is None:
            _kill_group(state.pid)
            return
        from rpc import ssh

        with ssh.session(board.ssh, self.accept_new_host_key) as remote:
            remote.stop(state.pid)

    def _alive(self, board: Board, state: BoardState) -> bool:
        if board.ssh is None:
            return _local_alive(state.pid)
        from rpc import ssh

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
        boards = {name: BoardState(**b) for name, b in raw.get("boards", {}).items()}
        return FarmState(raw.get("tracker_pid"), raw.get("tracker_port"), boards)

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


def _spawn(cmd: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Own session: the tracker and servers fork helpers that must die with them.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True).pid


def _local_alive(pid: int) -> bool:
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


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _local_alive(pid):
            time.sleep(0.1)
        if not _local_alive(pid):
            return


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpc.farm",
        description="Run a TVM RPC device farm from an inventory YAML: a tracker plus an RPC "
                    "server on every board (over SSH, or emulated aarch64 boards under qemu on "
                    "this machine). Tune against it with python -m pipeline.tune --tracker "
                    "HOST:PORT.",
        epilog="TVM RPC has no authentication: keep the tracker on 127.0.0.1 (the default) or a "
               "network you trust.")
    parser.add_argument("command", choices=["up", "status", "watch", "down"],
                        help="up: start all; status: per-class free/busy/dead boards; watch: "
                             "restart dead boards until Ctrl-C; down: stop all")
    parser.add_argument("--inventory", type=Path, default=Path("rpc/farm.yaml"),
                        help="inventory YAML (default: rpc/farm.yaml)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where PIDs and logs go (default: {STATE_ROOT}/<inventory name>)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and record SSH host keys not yet in known_hosts (verify "
                             "their fingerprints first); a changed key is always refused")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between health checks for watch (default 5)")
    args = parser.parse_args(argv)
    try:
        inventory = load_inventory(args.inventory)
        state_dir = args.state_dir or STATE_ROOT / args.inventory.stem
        farm = Farm(inventory, state_dir, args.accept_new_host_key, out=sys.stdout)
        if args.command == "up":
            farm.up()
        elif args.command == "down":
            farm.down()
            print("farm stopped")
            return 0
        elif args.command == "watch":
            print(f"watching {len(inventory.boards)} boards every {args.interval:.0f} s "
                  f"(Ctrl-C to stop watching; the farm keeps running)")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    farm.heal()
                    time.sleep(args.interval)
            return 0
        print_status(farm)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def print_status(farm: Farm) -> None:
    statuses = farm.status()
    print(f"tracker {farm.address} (python -m tvm.exec.query_rpc_tracker --host "
          f"{farm.address.host} --port {farm.address.port})")
    for key, row in class_counts(farm, statuses).items():
        print(f"  {key}: " + ", ".join(f"{n} {label}" for label, n in row.items() if n))
    for s in statuses:
        note = " (emulated: timings not real)" if s.emulated else ""
        print(f"    {s.name:<16} {s.state:<12} {s.where}{note}")


if __name__ == "__main__":
    sys.exit(main())
