"""Models compiled for this machine, untuned: the references quantized artifacts are
checked against, and the runs calibration reads activations from."""

from __future__ import annotations

from pipeline.base.devices import detect_host_target
from pipeline.compile.lowering import lower


def compile_for_host(mod):
    """`mod` compiled for this machine (untuned): a function from one input to its outputs."""
    import tvm
    from tvm import relax

    target = tvm.target.Target(detect_host_target())
    executable = tvm.compile(lower(mod, target), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(x):  # numpy in, list of numpy out
        result = vm["main"](tvm.runtime.tensor(x))
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

    return run
