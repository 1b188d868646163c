"""`python -m rpc.emulated setup`: build the emulated aarch64 boards' root filesystem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import run_main
from pipeline.farm.emulated import BOARDS_ROOT, require_ready, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpc.emulated",
        description="Set up emulated aarch64 boards (qemu-user + arm64 Debian + TVM). Their "
                    "timings are not real; use them for correctness, never for performance.")
    parser.add_argument("command", choices=["setup", "python"],
                        help="setup: build the root filesystem; python: print the board Python "
                             "for --cpu (an absolute path for an inventory's python: key)")
    parser.add_argument("--root", type=Path, default=BOARDS_ROOT,
                        help=f"where boards live (default: {BOARDS_ROOT})")
    parser.add_argument("--cpu", default="cortex-a53", help="QEMU CPU model (default cortex-a53)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "setup":
            print(f"emulated board ready: {setup(args.root)}")
        else:
            print(require_ready(args.cpu, args.root))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
