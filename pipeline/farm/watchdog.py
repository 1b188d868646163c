"""The embedded farm's watchdog: `python -m pipeline.farm.watchdog PID STATE_DIR`.

An embedded farm (a tracker and boards started for one command) must not outlive the command:
TVM RPC runs any code sent to it. A command that ends normally stops its farm itself; one
killed outright (SIGKILL, OOM) cannot. So the farm starts this process in a session of its
own: it waits for PID to end, then stops every process the farm's state file names (checked
against their recorded start times) and removes STATE_DIR. It leaves quietly when STATE_DIR
is gone, which is how a farm stopped normally says goodbye.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from pipeline.farm.processes import kill_group, local_alive

POLL_S = 0.5


def watch(parent: int, state_dir: Path) -> None:
    while state_dir.exists():
        if not local_alive(parent):  # gone, or a zombie its own parent has not reaped yet
            _stop_farm(state_dir)
            return
        time.sleep(POLL_S)


def _stop_farm(state_dir: Path) -> None:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {}
    if isinstance(state, dict):
        for board in (state.get("boards") or {}).values():
            if isinstance(board, dict) and board.get("identity") is not None:
                kill_group(board["pid"], board["identity"])
        if state.get("tracker_pid"):
            kill_group(state["tracker_pid"], state.get("tracker_started"))
    shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parent, state_dir = (argv or sys.argv[1:])[:2]
    watch(int(parent), Path(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
