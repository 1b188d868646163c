"""Build: lower, apply the tuning logs, compile for the device class, export one library.

`python -m pipeline.build --device D --model M` rebuilds from the committed logs without tuning.
The same logs, model, TVM and compiler give a byte-identical library: the manifest records its
hash and `python -m pipeline.rebuild` checks it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import logs
from pipeline.devices import DeviceConfig, available_devices
from pipeline.errors import UserError
from pipeline.lowering import apply_database, lower
from pipeline.models import ZOO_NAMES, parse_shape


@dataclass(frozen=True)
class BuiltLibrary:
    path: Path
    tuned_kernels: int  # kernels that came from the logs
    total_kernels: int
    # conv2d/matmul kernels -> the dtypes of their data and weight operands, read off the
    # module handed to code generation: proof of what the library computes in
    operands: dict[str, tuple[str, str]]


def build_library(mod, device: DeviceConfig, log_folder: Path | None,
                  out_path: Path) -> BuiltLibrary:
    """Compile the Relax module `mod` (imported, maybe quantized) for `device` with the logs in
    `log_folder` (if any) into `out_path`."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    target = device.tvm_target()
    lowered = lower(mod, target)
    total = len(_called_kernels(lowered))
    if log_folder is not None and logs.count_records(log_folder) > 0:
        logs.check_target(log_folder, device.target, device.name)
        with tempfile.TemporaryDirectory() as scratch:
            # A copy: JSONDatabase may append to its files, and the logs must not change under
            # a build; a line cut short (a truncated file) is set aside and named.
            for line in logs.snapshot(log_folder, Path(scratch)).dropped:
                print(f"warning: skipped a corrupt tuning record: "
                      f"{line.replace(scratch, str(log_folder))}", file=sys.stderr)
            database = ms.database.JSONDatabase(
                path_workload=str(Path(scratch) / logs.WORKLOADS),
                path_tuning_record=str(Path(scratch) / logs.RECORDS))
            applied = apply_database(lowered, target, database)
    else:
        applied = lowered
    called = _called_kernels(applied)
    tuned = sum(1 for func in called if func.attrs and func.attrs.get("tirx.is_scheduled", False))
    operands = matmul_operands(applied)
    executable = tvm.compile(applied, target=target)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _export(executable, out_path, device.compiler())
    return BuiltLibrary(out_path, tuned, total, operands)


def matmul_operands(mod) -> dict[str, tuple[str, str]]:
    """For each convolution or matmul kernel `main` calls: the dtypes of the data and weights
    it is called with. Fused kernels are named after the Relax ops they hold."""
    import tvm
    from tvm import relax

    found: dict[str, tuple[str, str]] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            if "conv2d" in name or "matmul" in name:
                found[name] = tuple(str(arg.ty.dtype) for arg in list(expr.args[1].fields)[:2])

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _called_kernels(mod) -> list:
    """The TIR kernels that `main` calls (helpers such as weight re-tiling are folded away)."""
    import tvm
    from tvm import relax

    names: set[str] = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: names.add(e.args[0].name_hint)
                                    if isinstance(e, relax.Call) and e.op.same_as(
                                        tvm.ir.Op.get("relax.call_tir")) else None)
    return [mod[name] for name in sorted(names)]


def _export(executable, out_path: Path, compiler: str) -> None:
    """Link to a temporary name in the same folder, then rename: never a half-written library.

    Linked with `-s`: LLVM's debug sections are ~15% of an int8 library and nothing on a board
    reads them; the runtime finds its entry points in the dynamic symbol table, which stays."""
    from tvm.support import cc

    tmp = out_path.with_name(f".{out_path.name}.partial")
    executable.export_library(str(tmp), fcompile=cc.create_shared, cc=compiler, options=["-s"])
    tmp.replace(out_path)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, metavar="DEVICE",
                        help=f"device class: {', '.join(available_devices())}, or a YAML file")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help=f"zoo name ({', '.join(ZOO_NAMES)}), an .onnx file, or a PyTorch "
                             f"factory package.module:function (needs --input-shape)")
    parser.add_argument("--input-shape", type=_shape_arg, metavar="N,C,H,W",
                        help="static input shape, e.g. 1,3,224,224 (default: the model's own)")
    parser.add_argument("--logs", type=Path, default=logs.LOG_ROOT, metavar="DIR",
                        help="root of the tuning logs (default: the repository's tuning_logs/)")


def _shape_arg(text: str):
    try:
        return parse_shape(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    from pipeline.flow import run_cli
    from pipeline.quantize import add_quantize_arguments

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.build",
        description="Rebuild an artifact from the committed tuning logs, with no tuning: "
                    "compile, verify on a board through the tracker, and package.")
    add_model_arguments(parser)
    add_quantize_arguments(parser)
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="RPC tracker of the farm to verify on (default: an embedded local "
                             "farm: this machine, or an emulated board for ARM classes)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="artifact folder (default: artifacts/<device>/<model>-<variant>)")
    args = parser.parse_args(argv)
    return run_cli(args, tune_trials=0)


if __name__ == "__main__":
    sys.exit(main())
