"""`python -m pipeline.tune`: tune a model's kernels for a device class, then build, verify on a
board and package the artifact. Re-running resumes from the logs."""

from __future__ import annotations

import argparse
import sys

from pipeline.base.devices import MAX_COUNT
from pipeline.cli import add_model_arguments, add_quantize_arguments, build_main


def _trials(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"--trials '{text}' must be a whole number from 0 to "
                                         f"{MAX_COUNT}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tune",
        description=(
            "Tune MODEL's kernels for DEVICE with MetaSchedule (XGBoost cost model), measuring "
            "candidates on boards of the class through a TVM RPC tracker, then build, verify the "
            "artifact on a board against the framework, and package it with its logs."),
        epilog=(
            "Logs go to tuning_logs/<device>/<model>-<variant>/ and every measured trial is "
            "written at once: Ctrl-C and re-run to resume. Trials already in the logs count "
            "toward --trials, so a met budget goes straight to the build. A tracker that stops "
            "answering for 60 s ($PIPELINE_TRACKER_GRACE_S) ends the run; re-run to resume.\n\n"
            "examples:\n"
            "  python -m pipeline.tune --device x86-nuc --model efficientnet-lite0\n"
            "  python -m pipeline.tune --device host --model net.onnx --trials 200\n"
            "  python -m pipeline.tune --device arm-a53 --model efficientnet-lite0 "
            "--quantize int8\n"
            "  python -m rpc.farm up && "
            "python -m pipeline.tune --device arm-a53 --model tiny-cnn --tracker 127.0.0.1:9190\n\n"
            "ARM classes tune on modeled boards: qemu runs the real aarch64 code and a timing "
            "model of the class's core (rpc/TIMING_MODEL.md) gives each candidate's latency, the "
            "same on every run; those figures are labelled 'modeled', never 'measured'."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_quantize_arguments(parser)
    parser.add_argument("--trials", type=_trials, metavar="N",
                        help="total tuning budget, logs included (default: the device config's "
                             "tuning.trials)")
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="RPC tracker of the device farm (python -m rpc.farm up starts one; "
                             "default: an embedded farm on 127.0.0.1 with one board: this "
                             "machine for x86 classes, a modeled aarch64 board for ARM ones)")
    parser.add_argument("--retune", action="store_true",
                        help="host only: tune for this exact CPU into tuning_logs/host/ even "
                             "when a committed x86 class's logs would serve (by default host "
                             "without logs of its own uses those of the fastest x86 class this "
                             "CPU runs); the search starts from that class's best records")
    parser.add_argument("--fresh-cost-model", dest="trained_cost_model", action="store_false",
                        help="rank candidates with a fresh XGBoost model, which picks the "
                             "first 100 at random (default: the model trained on the class's "
                             "committed records, tuning_logs/<class>/cost_model/, where one is "
                             "shipped)")
    parser.add_argument("--verbose", action="store_true", help="show MetaSchedule's own logs")
    args = parser.parse_args(argv)
    return build_main(args, trials=args.trials)


if __name__ == "__main__":
    sys.exit(main())
