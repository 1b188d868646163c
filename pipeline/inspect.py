"""`python -m pipeline.inspect MODEL`: check a model before anything else: its operators and
whether TVM imports them, the NHWC layout's cost, the kernels MetaSchedule would tune, and how
many records the tuning logs already hold for each."""

from __future__ import annotations

import argparse
import sys

from pipeline.base.devices import available_devices, load_device
from pipeline.cli import MODEL_HELP, add_shape_and_logs_arguments, run_main
from pipeline.frontend.models import load_model
from pipeline.job.inspect_job import inspect_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.inspect",
        description="Check MODEL before tuning or building it: list its operators (and which "
                    "TVM cannot import), the transposes the NHWC layout adds, the kernels "
                    "MetaSchedule would tune for DEVICE, and the records the tuning logs already "
                    "hold for each (fp32). Nothing is written. Exit 0 if the model can be built, "
                    "2 if not.",
        epilog="example: python -m pipeline.inspect efficientnet-lite0 --device host")
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--device", default="host", metavar="DEVICE",
                        help=f"device class whose tasks and logs to show: "
                             f"{', '.join(available_devices())}, or a YAML file (default: host)")
    add_shape_and_logs_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        report = inspect_model(load_model(args.model, args.input_shape),
                               load_device(args.device), args.logs)
        print(report.describe())
        return 2 if report.problem else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
