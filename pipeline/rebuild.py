"""`python -m pipeline.rebuild ARTIFACT`: rebuild an artifact from its own manifest and bundled
tuning logs and prove the library is byte-identical, or name the input that differs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.artifact.manifest import LIB_NAME
from pipeline.cli import run_main, shape_arg
from pipeline.frontend.models import load_model
from pipeline.job.rebuild_job import rebuild


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.rebuild",
        description="Rebuild ARTIFACT from its manifest and bundled tuning logs, and check that "
                    "the library is byte-identical to the packaged one. Exit 0 if identical, 1 if "
                    "not (naming the inputs that changed), 2 on bad input.")
    parser.add_argument("artifact", type=Path, help="artifact folder (holds manifest.json)")
    parser.add_argument("--model", metavar="SPEC",
                        help="the model to rebuild with, for an artifact of a PyTorch factory "
                             "(package.module:function): code named by a manifest is never "
                             "imported, so you name it here; its hash must match the manifest")
    parser.add_argument("--input-shape", type=shape_arg, metavar="N,C,H,W",
                        help="with --model: the input shape it was built with")
    args = parser.parse_args(argv)

    def body() -> int:
        model = load_model(args.model, args.input_shape) if args.model else None
        report = rebuild(args.artifact, model)
        if report.identical:
            print(f"identical: {LIB_NAME} rebuilt byte for byte (sha256 {report.rebuilt_sha256})")
            return 0
        print(f"DIFFERENT: rebuilt {LIB_NAME} has sha256 {report.rebuilt_sha256}, the manifest "
              f"records {report.expected_sha256}")
        for line in report.differences or ("no recorded input differs: the build is not "
                                           "deterministic (a bug worth reporting)",):
            print(f"  - {line}")
        return 1

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
