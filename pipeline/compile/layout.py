"""NHWC conversion that never breaks a build.

Relax's ConvertLayout moves convolutions to NHWC and carries the new layout through every op
that can infer one; around an op that cannot, it places transposes back to NCHW. Some ops'
layout inference fails outright instead (an internal error on shapes it does not expect). Those
ops are fenced: each call is moved into a private function that the conversion treats as
opaque, with transposes around it, and inlined back afterwards. Which ops need the fence is
found by trial, so an op TVM learns to convert is converted again without a change here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

# NHWC activations with HWIO weights: the channel axis is innermost, so depthwise and 1x1
# convolutions (most of a mobile net) vectorize over channels instead of over small 7x7 planes.
CPU_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


@dataclass(frozen=True)
class LayoutReport:
    transposes_added: int  # of activations: those of weights fold into the constants
    kept_in_nchw: tuple[str, ...]  # ops that read a transpose the conversion placed
    fenced: tuple[str, ...]  # ops whose layout inference failed
    converted: bool = True

    def describe(self) -> str:
        if not self.converted:
            return "layout: kept in NCHW (the NHWC conversion failed even with every op fenced)"
        if not self.transposes_added:
            return "layout: NHWC throughout, no transposes added"
        kept = ", ".join(f"{op} x{n}" for op, n in Counter(self.kept_in_nchw).most_common())
        fenced = f"; fenced (layout inference failed): {', '.join(self.fenced)}" \
            if self.fenced else ""
        return (f"layout: NHWC with {self.transposes_added} transposes added around ops kept in "
                f"NCHW ({kept}){fenced}")


def convert_layout(mod) -> tuple[object, LayoutReport]:
    """`mod` with convolutions in CPU_LAYOUTS, and what it cost in transposes."""
    converted = _converted(mod, frozenset())
    fenced: frozenset[str] = frozenset()
    if converted is None:
        candidates = {op for op in _op_names(mod) if op not in CPU_LAYOUTS}
        fenced = frozenset(candidates)
        converted = _converted(mod, fenced)
        if converted is None:
            log.warning("the NHWC layout conversion failed even with every op fenced; building "
                        "in NCHW (slower convolutions)")
            return mod, LayoutReport(0, (), (), converted=False)
        for op in sorted(candidates):  # release every fence the conversion does not need
            trial = _converted(mod, fenced - {op})
            if trial is not None:
                fenced, converted = fenced - {op}, trial
    added = _transposes(converted) - _transposes(mod)
    kept = Counter(op for op in _transpose_readers(converted) if op not in CPU_LAYOUTS)
    kept -= Counter(_transpose_readers(mod))
    return converted, LayoutReport(max(added, 0), tuple(sorted(kept.elements())),
                                   tuple(sorted(fenced)))


def _converted(mod, fenced: frozenset[str]):
    from tvm import relax

    try:
        fenced_mod = _fence(mod, fenced) if fenced else mod
        out = relax.transform.ConvertLayout(CPU_LAYOUTS)(fenced_mod)
        return relax.transform.InlinePrivateFunctions()(out) if fenced else out
    except RuntimeError as err:  # TVM's InternalError and OpError among them
        log.debug("ConvertLayout with %s fenced: %s", sorted(fenced) or "nothing",
                  str(err).strip().splitlines()[-1:])
        return None


def _fence(mod, ops: frozenset[str]):
    """Move every call of `ops` in `main` into a private function of its own."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Fence(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.count = 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name in ops):
                return call
            free = list(relax.analysis.free_vars(call))
            params = [relax.Var(v.name, v.ty) for v in free]
            body = Rename(dict(zip(free, params, strict=True))).visit_expr(call)
            func = relax.Function(params, body, ret_ty=call.ty, is_pure=True)
            self.count += 1
            name = f"fenced_{call.op.name.replace('.', '_')}_{self.count}"
            gvar = self.builder_.add_func(func, name)
            return relax.Call(gvar, free)

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):
        def __init__(self, mapping):
            super().__init__()
            self.mapping = mapping

        def visit_var_(self, var):
            return self.mapping.get(var, var)

        def visit_dataflow_var_(self, var):
            return self.mapping.get(var, var)

    fence = Fence(mod)
    fence.builder_.update_func(mod.get_global_var("main"), fence.visit_expr(mod["main"]))
    return fence.builder_.get()


def _op_names(mod) -> set[str]:
    return {call.op.name for call in _calls(mod)}


def _transposes(mod) -> int:
    import tvm

    return sum(call.op.name == "relax.permute_dims"
               and not isinstance(call.args[0], tvm.ir.Constant) for call in _calls(mod))


def _transpose_readers(mod) -> list[str]:
    """Each op that reads a transposed activation, once per such transpose."""
    import tvm
    from tvm import relax

    transposed = set()
    readers = []
    for binding in _bindings(mod):
        value = binding.value
        if not isinstance(value, relax.Call) or not hasattr(value.op, "name"):
            continue
        if value.op.name == "relax.permute_dims" and not isinstance(value.args[0],
                                                                    tvm.ir.Constant):
            transposed.add(binding.var)
        args = [f for a in value.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
        readers += [value.op.name for arg in args if arg in transposed
                    and value.op.name != "relax.permute_dims"]
    return readers


def _calls(mod) -> list:
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call)
        and hasattr(e.op, "name") else None)
    return found


def _bindings(mod) -> list:
    return [b for block in mod["main"].body.blocks for b in block.bindings]
