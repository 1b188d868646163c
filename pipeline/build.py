"""`python -m pipeline.build --device D --model M`: rebuild an artifact from the committed
tuning logs, with no tuning: compile, verify on a board, package."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import add_model_arguments, add_quantize_arguments, build_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.build",
        description="Rebuild an artifact from the committed tuning logs, with no tuning: "
                    "compile, verify on a board through the tracker, and package.")
    add_model_arguments(parser)
    add_quantize_arguments(parser)
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="RPC tracker of the farm to verify on (default: an embedded local "
                             "farm: this machine, or a modeled aarch64 board for ARM classes)")
    args = parser.parse_args(argv)
    return build_main(args, trials=0)


if __name__ == "__main__":
    sys.exit(main())
