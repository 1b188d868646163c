"""Framework -> Relax: torch.export or ONNX, parameters bound as constants, BN and pads folded.

Binding the weights as constants lets FoldConstant pre-compute batch-norm folding and weight
layout changes once at build time; the weights end up inside the compiled library.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.base.errors import UserError
from pipeline.frontend.models import LoadedModel
from pipeline.frontend.passes import fold_inference_constants


@dataclass(frozen=True)
class ImportedModel:
    mod: object  # tvm.IRModule with a single `main(input)` and constant weights
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def import_model(model: LoadedModel) -> ImportedModel:
    from tvm import relax

    mod = _import_torch(model) if model.torch_module is not None else _import_onnx(model)
    mod, params = relax.frontend.detach_params(mod)
    if params.get("main"):
        weights = list(mod["main"].params)[1:]
        bindings = dict(zip(weights, params["main"], strict=True))
        mod = relax.transform.BindParams("main", bindings)(mod)
    mod = fold_inference_constants()(mod)
    output = mod["main"].ret_ty
    if not hasattr(output, "shape"):
        raise UserError(f"Model '{model.spec}' returns {output}; the pipeline handles models with "
                        f"one tensor output.")
    return ImportedModel(mod, model.input_shape, tuple(int(d) for d in output.shape))


def _import_torch(model: LoadedModel):
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    example = (torch.zeros(model.input_shape),)
    try:
        exported = torch.export.export(model.torch_module, example)
    except Exception as err:  # torch.export raises many kinds of errors on unsupported code
        raise UserError(f"torch.export could not trace '{model.spec}': {err}. The pipeline needs "
                        f"a model without data-dependent control flow.") from None
    return from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)


def _import_onnx(model: LoadedModel):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    proto = onnx.load(str(model.onnx_path))
    proto = _upgrade_opset(proto)
    try:
        return from_onnx(proto, shape_dict={model.input_name: list(model.input_shape)},
                         keep_params_in_input=True)
    except Exception as err:  # the frontend raises on unsupported ops and bad shapes alike
        raise UserError(f"TVM could not import {model.onnx_path}: {type(err).__name__}: "
                        f"{str(err).splitlines()[-1] if str(err) else ''}. Check --input-shape, "
                        f"or re-export the model with a newer opset.") from None


MIN_OPSET = 13


def _upgrade_opset(proto):
    """Old exporters and model zoos ship opsets < 13 whose op semantics the frontend handles
    less well (Pad/Squeeze attributes, Upsample); ONNX's own converter lifts them first."""
    from onnx import version_converter

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET:
        return proto
    _drop_initializer_inputs(proto)
    try:
        return version_converter.convert_version(proto, MIN_OPSET)
    except Exception:  # the converter lacks adapters for some ops: import as is, then
        return proto


def _drop_initializer_inputs(proto) -> None:
    """Older exporters list every weight as a graph input too; they are constants, not inputs."""
    initializers = {init.name for init in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
