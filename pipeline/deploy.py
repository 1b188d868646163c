"""`python -m pipeline.deploy ARTIFACT --board NAME`: push an artifact to a board over SSH,
check its hashes there against the manifest, and run a smoke inference on the board."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.base.paths import DEFAULT_INVENTORY
from pipeline.cli import run_main
from pipeline.farm.inventory import load_inventory
from pipeline.job.deploy_job import deploy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.deploy",
        description="Push an artifact to a farm board over SSH, check its sha256 there against "
                    "the manifest, and run a smoke inference on the board: against the "
                    "framework's output when the model can be loaded here, otherwise a shape "
                    "and finiteness check on seeded noise.")
    parser.add_argument("artifact", type=Path, help="artifact folder (with manifest.json)")
    parser.add_argument("--board", required=True, help="board name from the inventory")
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY,
                        help="farm inventory YAML (default: rpc/farm.yaml)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and record a host key not yet in known_hosts")
    args = parser.parse_args(argv)

    def body() -> int:
        board = load_inventory(args.inventory).board(args.board)
        result = deploy(args.artifact, board, args.accept_new_host_key)
        check = ("matches the framework (max abs error "
                 f"{result.max_abs_error:.2e})" if result.max_abs_error is not None
                 else "has the right shape and is finite (model not available here to compare)")
        timing = ("emulated board: timing not meaningful" if result.emulated
                  else f"{result.board_ms_median:.2f} ms median of 3")
        print(f"deployed to {result.board}:{result.remote_dir}; output {check}; {timing}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
