"""Smoke inference of a deployed artifact, run on the board with its own Python.

Standalone (stdlib + numpy + tvm): loads lib.so, runs `main` on the input .npy, writes the
output .npy and prints one JSON line (shape, finiteness, median latency).
"""

import json
import sys
import time


def main(argv=None):
    lib, inp, out = (argv or sys.argv[1:])[:3]
    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib), dev)
    x = tvm.runtime.tensor(np.load(inp), dev)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        y = vm["main"](x).numpy()
        times.append((time.perf_counter() - start) * 1e3)
    np.save(out, y)
    print(json.dumps({"shape": list(y.shape), "finite": bool(np.isfinite(y).all()),
                      "ms_median": sorted(times)[1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
