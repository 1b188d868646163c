"""ONNX files as users hand them over, made into graphs TVM's ONNX frontend imports.

Exporters of every era wrote shape arithmetic (Shape, Gather, ConstantOfShape, even If) around
Reshape and Pad that only a static input shape resolves, listed weights as graph inputs, and
kept inference Dropout with its mask output. The frontend takes none of these well, so the graph
is first simplified with the input shape fixed (onnxsim: shape inference and constant folding),
then Dropout is rewritten here, then old opsets are lifted to one the frontend knows well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.base.errors import UserError

log = logging.getLogger(__name__)

MIN_OPSET = 13
# Handled by the frontend outside its converter table.
_BUILT_IN = {"Constant", "If"}


@dataclass(frozen=True)
class OnnxOperator:
    op_type: str
    node: str  # the first node of this type, by name or position
    count: int
    supported: bool


def opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)


def prepare(proto, input_name: str, input_shape: tuple[int, ...], source: str):
    """The graph to import: simplified for this input shape, inference forms rewritten, lifted
    to at least MIN_OPSET. Refuses, naming it, an operator the frontend has no converter for."""
    _drop_initializer_inputs(proto)
    proto = _simplified(proto, input_name, input_shape, source)
    _rewrite_inference_forms(proto)
    check_supported(proto, source)
    return _upgraded(proto)


def operators(proto) -> list[OnnxOperator]:
    """Every operator type in the graph, in order of first use, and whether TVM imports it."""
    convert_map = _frontend_converters()
    seen: dict[str, list] = {}
    for index, node in enumerate(proto.graph.node):
        standard = node.domain in ("", "ai.onnx")
        op = node.op_type if standard else f"{node.domain}.{node.op_type}"
        entry = seen.setdefault(op, [node.name or f"#{index}", 0, standard])
        entry[1] += 1
    return [OnnxOperator(op, first, count,
                         standard and (op in convert_map or op in _BUILT_IN))
            for op, (first, count, standard) in seen.items()]


def check_supported(proto, source: str) -> None:
    missing = [op for op in operators(proto) if not op.supported]
    if missing:
        first = missing[0]
        others = f" (and {', '.join(op.op_type for op in missing[1:])})" if missing[1:] else ""
        raise UserError(
            f"{source} uses the ONNX operator {first.op_type} (node '{first.node}', opset "
            f"{opset_of(proto)}){others}, which TVM's ONNX importer does not support. Export the "
            f"model at another opset, replace that layer with supported operators (python -m "
            f"pipeline.inspect {source} lists them), or report it to Apache TVM with the model.")


def import_failure(err: BaseException, opset: int, source: str) -> UserError:
    """A converter that raised, made into an error naming the node it was converting (`opset`:
    the file's own)."""
    node = _node_being_converted(err)
    where = f"its {node.op_type} node '{node.name}' (opset {opset})" if node else f"opset {opset}"
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return UserError(f"TVM could not import {source} at {where}: {reason}. Check --input-shape, "
                     f"export the model at another opset, or replace that layer (python -m "
                     f"pipeline.inspect {source} lists the operators).")


def _frontend_converters() -> set[str]:
    # Private to TVM's frontend, and what its own unsupported-op check reads; test_importer
    # fails first if it is renamed.
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


def _node_being_converted(err: BaseException):
    traceback = err.__traceback__
    node = None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "_construct_nodes" and "node" in frame.f_locals:
            node = frame.f_locals["node"]
        traceback = traceback.tb_next
    return node


def _drop_initializer_inputs(proto) -> None:
    """Older exporters list every weight as a graph input too; they are constants, not inputs."""
    initializers = {init.name for init in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)


def _simplified(proto, input_name: str, input_shape: tuple[int, ...], source: str):
    import onnxsim

    try:
        simplified, checked = onnxsim.simplify(
            proto, overwrite_input_shapes={input_name: list(input_shape)},
            # Batch norm stays for TVM to fold, in its own arithmetic: the weights the build
            # sees are the file's.
            skip_fuse_bn=True)
    except Exception as err:  # onnxsim raises whatever its C++ core or onnx raised
        log.warning("could not simplify %s (%s: %s); importing it as it is", source,
                    type(err).__name__, str(err).strip().splitlines()[-1:] or "")
        return proto
    if not checked:
        log.warning("the simplified %s did not match the original on a test input; importing "
                    "the original", source)
        return proto
    return simplified


def _rewrite_inference_forms(proto) -> None:
    """Dropout is the identity at inference, when its mask output is unused (the frontend
    returns one value for its two outputs)."""
    from onnx import helper

    used = {name for node in proto.graph.node for name in node.input}
    used |= {output.name for output in proto.graph.output}
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Dropout" and not any(o in used for o in node.output[1:] if o):
            node.CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                           name=node.name or f"Dropout_{index}"))


def _upgraded(proto):
    """Old opsets' op semantics (Pad/Squeeze attributes, Upsample) are handled less well by the
    frontend; ONNX's own converter lifts them first."""
    from onnx import helper, version_converter

    opset = opset_of(proto)
    if opset >= MIN_OPSET:
        return proto
    try:
        upgraded = version_converter.convert_version(proto, MIN_OPSET)
    except Exception:  # the converter lacks adapters for some ops: import as is
        return proto
    if opset < 11:
        # Upsample and Resize-10 sample at x_out / scale and round nearest down; the converter
        # writes Resize-11+ without saying so, whose defaults are half-pixel and round-half.
        for node in upgraded.graph.node:
            given = {a.name for a in node.attribute}
            if node.op_type == "Resize" and "coordinate_transformation_mode" not in given:
                node.attribute.extend([
                    helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                    helper.make_attribute("nearest_mode", "floor")])
    return upgraded
