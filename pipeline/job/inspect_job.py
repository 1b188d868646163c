"""`pipeline.inspect`: what the pipeline will make of a model, before any tuning or building.

    operators (and whether TVM imports them) -> import -> layout -> tasks -> records in the logs
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.devices import DeviceConfig
from pipeline.base.errors import UserError
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.compile.layout import LayoutReport
from pipeline.compile.lowering import lower_with_layout
from pipeline.compile.tuning import task_records, tunable_tasks
from pipeline.frontend import onnx_graph
from pipeline.frontend.importer import import_model
from pipeline.frontend.models import LoadedModel
from pipeline.job.build_job import logs_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Operator:
    name: str
    count: int
    supported: bool


@dataclass(frozen=True)
class TaskRecords:
    name: str
    weight: int  # how many times the model calls the kernel
    records: int
    best_ms: float | None


@dataclass(frozen=True)
class Inspection:
    model: LoadedModel
    device: str
    operators: tuple[Operator, ...]
    logs: Path
    problem: str | None = None  # why the model cannot be built; nothing below is then known
    output_shape: tuple[int, ...] | None = None
    layout: LayoutReport | None = None
    tasks: tuple[TaskRecords, ...] = ()

    def describe(self) -> str:
        model = self.model
        lines = [f"model {model.spec} ({model.source}), input '{model.input_name}' "
                 f"{list(model.input_shape)}"
                 + (f", output {list(self.output_shape)}" if self.output_shape else "")]
        kind = "ONNX operators" if model.source == "onnx" else "operators after import (Relax)"
        lines.append(f"\n{kind}: {len(self.operators)} kinds")
        for op in self.operators:
            lines.append(f"  {op.name:32s} x{op.count:<4d} "
                         f"{'supported' if op.supported else 'NOT SUPPORTED'}")
        if self.problem:
            lines.append(f"\ncannot be built: {self.problem}")
            return "\n".join(lines)
        lines.append(f"\n{self.layout.describe()}")
        tuned = sum(t.records > 0 for t in self.tasks)
        lines.append(f"\ntasks MetaSchedule tunes for {self.device}: {len(self.tasks)} "
                     f"({tuned} with records in {self.logs}, "
                     f"{sum(t.records for t in self.tasks)} valid records)")
        for task in self.tasks:
            best = f"best {task.best_ms:.4f} ms" if task.best_ms is not None else "untuned"
            lines.append(f"  {task.name:60s} x{task.weight:<3d} {task.records:5d} records  {best}")
        return "\n".join(lines)


def inspect_model(model: LoadedModel, device: DeviceConfig, log_root: Path) -> Inspection:
    """Operators, layout, tasks and their records, for the fp32 model on `device`."""
    source = logs_for(device, ArtifactKey(device.name, model.name, Variant.FP32), log_root)
    device, folder = source.device, source.folder
    operators = _onnx_operators(model) if model.source == "onnx" else ()
    try:
        imported = import_model(model)
    except UserError as err:
        return Inspection(model, device.name, operators, folder, problem=str(err))
    if not operators:
        operators = _relax_operators(imported.mod)
    target = device.tvm_target()
    lowered, layout = lower_with_layout(imported.mod, target)
    tasks = tunable_tasks(lowered, target)
    records = task_records(folder, tasks) if folder.is_dir() else {}
    rows = tuple(TaskRecords(t.task_name, int(t.weight), *_in_ms(records.get(t.task_name)))
                 for t in tasks)
    return Inspection(model, device.name, operators, folder, None, imported.output_shape,
                      layout, rows)


def _in_ms(history: tuple[int, float | None] | None) -> tuple[int, float | None]:
    count, best = history or (0, None)
    return count, None if best is None else best * 1e3


def _onnx_operators(model: LoadedModel) -> tuple[Operator, ...]:
    import onnx

    proto = onnx.load(str(model.onnx_path))
    return tuple(Operator(op.op_type, op.count, op.supported)
                 for op in onnx_graph.operators(proto))


def _relax_operators(mod) -> tuple[Operator, ...]:
    from tvm import relax

    counts: Counter[str] = Counter()
    relax.analysis.post_order_visit(
        mod["main"], lambda e: counts.update([e.op.name]) if isinstance(e, relax.Call)
        and hasattr(e.op, "name") else None)
    return tuple(Operator(name, n, True) for name, n in counts.most_common())
