"""Run one runtime on a modeled ARM board and print its modeled latency (used by
bench/arm_efficientnet.py, which starts this file with the board's Python under qemu and the
timing model; stdlib, numpy and the runtime only: it runs on the aarch64 root filesystem).

    python-modeled-arm-a53 bench/modeled_run.py tvm|ort|litert MODEL INPUT.npy [--repeats 2]

Prints one JSON line: the modeled milliseconds of each repeat (each after one uncounted run,
caches emptied before it), the model's label fields and its counters, and the output's top-1.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rpc"))
from board_server import ModeledClock  # noqa: E402


def runner(runtime: str, model: str, x):
    import numpy as np

    if runtime == "tvm":
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(tvm.runtime.load_module(model), tvm.cpu())
        inp = tvm.runtime.tensor(x)
        vm.set_input("main", inp)
        return lambda: vm.invoke_stateful("main"), lambda: vm.get_outputs("main").numpy()
    if runtime == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the model is one core
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out = {}

        def run():
            out["y"] = session.run(None, {name: x})[0]
        return run, lambda: out["y"]
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=model, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        data = x
        if detail["dtype"] != np.float32:  # a fully integer model: quantize the input
            scale, zero = detail["quantization"]
            data = np.clip(np.round(x / scale + zero), -128, 127).astype(detail["dtype"])
        if tuple(detail["shape"]) != x.shape:  # NHWC models
            data = data.transpose(0, 2, 3, 1)
        interpreter.set_tensor(detail["index"], data)
        output = interpreter.get_output_details()[0]
        return interpreter.invoke, lambda: interpreter.get_tensor(output["index"])
    raise SystemExit(f"unknown runtime {runtime}")


def main(argv=None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtime", choices=["tvm", "ort", "litert"])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    x = np.load(args.input)
    run, output = runner(args.runtime, args.model, x)
    clock = ModeledClock()
    times, counters = [], None
    for _ in range(args.repeats):
        clock.reset()
        run()
        clock.mark()
        run()
        report = clock.read()
        times.append(ModeledClock.seconds(report) * 1e3)
        counters = {k: report["now"][k] - report["mark"][k] for k in report["now"]}
    print(json.dumps({"ms": times, "freq_mhz": report["freq_mhz"], "version": report["version"],
                      "counters": counters, "top1": int(np.argmax(output()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
