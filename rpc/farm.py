"""`python -m rpc.farm up | status | watch | down`: run the device farm of an inventory (the
farm itself, its state and its health checks, is pipeline.farm.lifecycle)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from pipeline.base.paths import DEFAULT_INVENTORY
from pipeline.cli import run_main
from pipeline.farm.inventory import load_inventory
from pipeline.farm.lifecycle import STATE_ROOT, Farm, class_counts


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
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY,
                        help="inventory YAML (default: rpc/farm.yaml)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where PIDs and logs go (default: {STATE_ROOT}/<inventory name>)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and record SSH host keys not yet in known_hosts (verify "
                             "their fingerprints first); a changed key is always refused")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between health checks for watch (default 5)")
    args = parser.parse_args(argv)

    def body() -> int:
        inventory = load_inventory(args.inventory)
        state_dir = args.state_dir or STATE_ROOT / args.inventory.stem
        farm = Farm(inventory, state_dir, args.accept_new_host_key)
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
        return 0

    return run_main(body)


def print_status(farm: Farm) -> None:
    statuses = farm.status()
    print(f"tracker {farm.address} (python -m tvm.exec.query_rpc_tracker --host "
          f"{farm.address.host} --port {farm.address.port})")
    for key, row in class_counts(farm, statuses).items():
        print(f"  {key}: " + ", ".join(f"{n} {label}" for label, n in row.items() if n))
    for s in statuses:
        note = (" (timings from the class's timing model)" if s.modeled
                else " (emulated: timings not real)" if s.emulated else "")
        print(f"    {s.name:<16} {s.state:<12} {s.where}{note}")


if __name__ == "__main__":
    sys.exit(main())
