"""The build stage: apply the tuning logs to the lowered model, compile it for the device class,
export one shared library.

The same logs, model, TVM and compiler give a byte-identical library: the manifest records its
hash and `python -m pipeline.rebuild` checks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.tuning_logs import (
    best_records,
    check_target,
    count_records,
    has_valid_records,
    transferred,
)
from pipeline.base.devices import DeviceConfig
from pipeline.compile.lowering import apply_database

REDUCTION = 2  # tvm.tirx.IterVar.CommReduce


@dataclass(frozen=True)
class BuiltLibrary:
    path: Path
    tuned_kernels: int  # kernels that came from the logs
    total_kernels: int
    # kernel -> "tuned", "transferred from <logs> <kernel>" or "default" (see TuningInfo)
    kernels: dict[str, str]
    # conv2d/matmul kernels -> the dtypes of their data and weight operands, read off the
    # module handed to code generation: proof of what the library computes in
    operands: dict[str, tuple[str, str]]


def build_library(lowered, device: DeviceConfig, log_folder: Path | None,
                  out_path: Path) -> BuiltLibrary:
    """Compile `lowered` (`pipeline.compile.lowering.lower` of the model for `device`) with the
    tuning logs in `log_folder` (if any) applied, into the shared library `out_path`. The logs
    are read as they are: the caller hands a snapshot that nothing appends to."""
    import tvm

    target = device.tvm_target()
    database = None
    if log_folder is not None and count_records(log_folder) > 0:
        check_target(log_folder, device.target, device.name)
        database = best_records(log_folder)
        applied = apply_database(lowered, target, database)
    else:
        applied = lowered
    kernels = kernel_sources(lowered, database,
                             transferred(log_folder) if log_folder is not None else {})
    tuned = sum(1 for status in kernels.values() if status != "default")
    operands = matmul_operands(applied)
    executable = tvm.compile(applied, target=target)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _export(executable, out_path, device.compiler())
    return BuiltLibrary(out_path, tuned, len(kernels), kernels, operands)


def kernel_sources(lowered, database, borrowed: dict[str, dict]) -> dict[str, str]:
    """Kernel name -> where its schedule comes from: "tuned", "transferred from <logs>
    <kernel>" (`borrowed`: the logs' transfer provenance), or "default" when the logs hold no
    record of it (MetaSchedule's database is keyed by the kernel as a one-function module)."""
    import tvm

    sources = {}
    for name, kernel in _called_kernels(lowered).items():
        workload = tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")})
        if database is None or not has_valid_records(database, workload):
            sources[name] = "default"
        elif name in borrowed:
            sources[name] = (f"transferred from {borrowed[name]['from']} "
                             f"{borrowed[name]['source_kernel']}")
        else:
            sources[name] = "tuned"
    return sources


def matmul_operands(mod) -> dict[str, tuple[str, str]]:
    """For each convolution or matmul kernel `main` calls: the dtypes of the data and weights
    it is called with (its first two arguments)."""
    import tvm
    from tvm import relax

    found: dict[str, tuple[str, str]] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            if _contracts(mod[name]):
                found[name] = tuple(str(arg.ty.dtype) for arg in list(expr.args[1].fields)[:2])

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _contracts(kernel) -> bool:
    """Whether a TIR kernel sums products of two inputs, as a convolution or a matmul does (a
    reduction block that reads two buffers besides its output), unlike a pooling or a mean."""
    from tvm import s_tir

    schedule = s_tir.Schedule(kernel)

    def blocks(parent):
        for child in schedule.get_child_blocks(parent):
            yield child
            yield from blocks(child)

    for handle in blocks(schedule.get_sblock("root")):
        block = schedule.get(handle)
        if any(int(var.iter_type) == REDUCTION for var in block.iter_vars):
            written = {str(region.source.name) for region in block.writes}
            if len({str(region.source.name) for region in block.reads} - written) >= 2:
                return True
    return False


def _called_kernels(mod) -> dict:
    """Name -> TIR kernel, for those `main` calls (helpers such as weight re-tiling are folded
    away)."""
    import tvm
    from tvm import relax

    names: set[str] = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: names.add(e.args[0].name_hint)
                                    if isinstance(e, relax.Call) and e.op.same_as(
                                        tvm.ir.Op.get("relax.call_tir")) else None)
    return {name: mod[name] for name in sorted(names)}


def _export(executable, out_path: Path, compiler: str) -> None:
    """Link to a temporary name in the same folder, then rename: never a half-written library.

    Linked with `-s`: LLVM's debug sections are a good part of an int8 library and nothing on a
    board reads them; the runtime finds its entry points in the dynamic symbol table, which
    stays."""
    from tvm.support import cc

    tmp = out_path.with_name(f".{out_path.name}.partial")
    executable.export_library(str(tmp), fcompile=cc.create_shared, cc=compiler, options=["-s"])
    tmp.replace(out_path)
