"""Framework -> Relax: torch.export or ONNX, parameters bound as constants, BN and pads folded.

Binding the weights as constants lets FoldConstant pre-compute batch-norm folding and weight
layout changes once at build time; the weights end up inside the compiled library.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pipeline.base.errors import UserError
from pipeline.frontend import onnx_graph
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
    with warnings.catch_warnings():  # a torch deprecation that torch itself and TVM trigger
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        try:
            exported = torch.export.export(model.torch_module, example)
        except Exception as err:  # torch.export raises many kinds of errors on unsupported code
            raise UserError(f"torch.export could not trace '{model.spec}': {err}. The pipeline "
                            f"needs a model without data-dependent control flow.") from None
        return from_exported_program(exported, keep_params_as_input=True,
                                     unwrap_unit_return_tuple=True)


def _import_onnx(model: LoadedModel):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    source = str(model.onnx_path)
    given = onnx.load(source)
    opset = onnx_graph.opset_of(given)
    proto = onnx_graph.prepare(given, model.input_name, model.input_shape, source)
    try:
        return from_onnx(proto, shape_dict={model.input_name: list(model.input_shape)},
                         keep_params_in_input=True)
    except Exception as err:  # the frontend raises on unsupported ops and bad shapes alike
        raise onnx_graph.import_failure(err, opset, source) from None
