"""Models compiled for this machine: what calibration, the accuracy measurements and the
reference for int8 verification run. Untuned, or with the tuning logs of the class being built
applied where this CPU runs the code they were tuned for."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.artifact.tuning_logs import best_records, count_records, logged_target
from pipeline.base.devices import detect_host_target, runs_target
from pipeline.compile.build import kernel_sources
from pipeline.compile.extensions import extensions_for
from pipeline.compile.lowering import apply_database, lower

log = logging.getLogger(__name__)

_CREATING = threading.Lock()


class HostModule:
    """A compiled Relax module: `module(*inputs)` -> its outputs as numpy arrays; `map` runs
    many inputs on every core. Untuned kernels run on one thread each, so a virtual machine
    per thread (one is not safe to share) runs inputs side by side: ~1.9x on 2 cores. Tuned
    kernels use every core themselves (`workers=1`)."""

    def __init__(self, executable, workers: int | None = None, tuned_kernels: int = 0):
        self._executable = executable
        self._local = threading.local()
        self.workers = workers or len(os.sched_getaffinity(0))
        self.tuned_kernels = tuned_kernels  # kernels compiled from tuning records

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
        from threadpoolctl import threadpool_limits

        def job(i: int, x):
            outputs = self(x, *shared)
            return outputs if then is None else then(i, outputs)

        # Each worker's numpy work (`then`) on one BLAS thread: the workers are the parallelism.
        blas = threadpool_limits(1, user_api="blas") if self.workers > 1 else None
        with blas or contextlib.nullcontext(), ThreadPoolExecutor(self.workers) as pool:
            pending: collections.deque = collections.deque()
            for i, x in enumerate(inputs):
                pending.append(pool.submit(job, i, x))
                if len(pending) > self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def compile_for_host(mod, records: Path | None = None, nhwc: bool = True) -> HostModule:
    """`mod` compiled for this machine: untuned, or, where the tuning logs in `records` were
    tuned for code this CPU runs, for their target with their kernels applied (as the artifact
    is built: 800 accuracy inputs then take seconds, not a minute).

    `nhwc=False` (untuned only) keeps the model's layout: the sensitivity simulation's weights
    depend on an input, so in NHWC each needs a transpose at run time, and LLVM takes ~30 s
    longer to generate its code (at the first run), for the same speed after."""
    import tvm

    logged = logged_target(records) if records is not None and count_records(records) else None
    if logged is None or not runs_target(logged):
        target = tvm.target.Target(detect_host_target())
        return HostModule(tvm.compile(lower(mod, target, nhwc), target=target))
    target = tvm.target.Target(logged)
    extensions_for(target).register_intrinsics()  # the records name them
    lowered, database = lower(mod, target), best_records(records)
    found = sum(1 for source in kernel_sources(lowered, database, {}).values()
                if source != "default")
    log.info(f"  compiled for {target.attrs.get('mcpu', target.kind.name)} with {found} kernels "
             f"from the tuning logs in {records}")
    return HostModule(tvm.compile(apply_database(lowered, target, database), target=target),
                      workers=1, tuned_kernels=found)
