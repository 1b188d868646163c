"""`python -m pipeline.nightly`: rebuild every deployable artifact from the committed logs.

For each entry of the matrix (models x device classes x precisions): build with no tuning,
verify on a board of the class when the farm has one (else say why not), compare the library
byte for byte with the released artifact (and name the input that differs), and compare latency
and accuracy with the previous night. Writes report.json and report.html (plots: latency over
nights, tuning curves, the tuning-minutes runs the matrix names) and exits 1 on a
reproducibility break, a regression or a failed entry. One failing entry does not stop the
others."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pipeline.base.paths import ARTIFACTS, NIGHTLY_MATRIX, TUNING_LOGS
from pipeline.cli import run_main, tracker
from pipeline.job.nightly_job import NIGHTLY_ROOT, load_matrix, run_nightly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.nightly",
        description="Rebuild every artifact of the matrix from the committed tuning logs, check "
                    "byte-identity with the released artifacts, verify on boards, compare with "
                    "the previous night, and write report.json + report.html.",
        epilog="Exit status: 0 all good; 1 a reproducibility break, a regression above the "
               "threshold, or a failed entry (the others still run); 2 bad input.")
    parser.add_argument("--matrix", type=Path, default=NIGHTLY_MATRIX,
                        help="matrix YAML: entries, regression_threshold, tuning_minutes "
                             "(bench/tuning_curve.py --json files to plot, relative to the "
                             "matrix; default: pipeline/nightly.yaml)")
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="farm to verify on; classes it has no board for are built but not "
                             "verified (default: an embedded board per class)")
    parser.add_argument("--releases", type=Path, default=ARTIFACTS,
                        help="released artifacts, <device>/<model>-<variant>[.tar.gz] "
                             "(default: artifacts/)")
    parser.add_argument("--history", type=Path, default=NIGHTLY_ROOT / "history",
                        help="earlier nights' reports (default: build/nightly/history)")
    parser.add_argument("--out", type=Path, default=NIGHTLY_ROOT / "latest",
                        help="tonight's artifacts and report (default: build/nightly/latest)")
    parser.add_argument("--logs", type=Path, default=TUNING_LOGS,
                        help="tuning log root (default: tuning_logs/)")
    parser.add_argument("--threshold", type=float,
                        help="allowed relative latency increase (overrides the matrix's)")
    args = parser.parse_args(argv)

    def body() -> int:
        matrix = load_matrix(args.matrix)
        if args.threshold is not None:
            matrix = dataclasses.replace(matrix, regression_threshold=args.threshold)
        report = run_nightly(matrix, tracker(args), args.releases, args.history, args.out,
                             args.logs)
        for entry in report.entries:
            print(f"{entry.id}: {entry.status}" + "".join(f"; {p}" for p in entry.problems)
                  + (f"; {entry.error}" if entry.error else ""))
        print(f"report: {args.out / 'report.html'}")
        return report.exit_code

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
