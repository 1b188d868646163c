"""Models compiled for this machine, untuned: what calibration, the accuracy measurements and
the reference for int8 verification run."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.base.devices import detect_host_target
from pipeline.compile.lowering import lower


_CREATING = threading.Lock()


class HostModule:
    """A compiled Relax module: `module(*inputs)` -> its outputs as numpy arrays; `map` runs
    many inputs on every core. Untuned kernels run on one thread each, so a virtual machine
    per thread (one is not safe to share) runs inputs side by side: ~1.9x on 2 cores."""

    def __init__(self, executable):
        self._executable = executable
        self._local = threading.local()
        self.workers = len(os.sched_getaffinity(0))

    def __call__(self, *inputs) -> list:
        import tvm
        from tvm import relax

        vm = getattr(self._local, "vm", None)
        if vm is None:
            with _CREATING:  # two threads loading one executable at once crash in TVM
                vm = self._local.vm = relax.VirtualMachine(self._executable, tvm.cpu())
        result = vm["main"](*(x if isinstance(x, tvm.runtime.Tensor) else tvm.runtime.tensor(x)
                              for x in inputs))
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

    def map(self, inputs: Iterable, *shared, then: Callable | None = None) -> Iterator:
        """The outputs for each of `inputs` (each followed by the `shared` arguments), in order,
        or `then(i, outputs)` for the i-th, computed on the same thread; at most a few results
        wait to be consumed (they may be large)."""
        def job(i: int, x):
            outputs = self(x, *shared)
            return outputs if then is None else then(i, outputs)

        with ThreadPoolExecutor(self.workers) as pool:
            pending: collections.deque = collections.deque()
            for i, x in enumerate(inputs):
                pending.append(pool.submit(job, i, x))
                if len(pending) > self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def compile_for_host(mod) -> HostModule:
    """`mod` compiled for this machine (untuned)."""
    import tvm

    target = tvm.target.Target(detect_host_target())
    return HostModule(tvm.compile(lower(mod, target), target=target))
