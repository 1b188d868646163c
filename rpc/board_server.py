"""TVM's RPC server as one of our boards: pushed to every board and run with its Python.

Standalone on purpose (stdlib + tvm only): a board has TVM and nothing of this project. Beside
TVM's own functions the server answers `edge_tvm.board_info`, so that the pipeline can tell what
it measured on (an emulated board's timings are not performance figures).

A modeled board (`--modeled`) runs under qemu with our timing model (rpc/timing_model.c): its
`runtime.RPCTimeEvaluator`, which MetaSchedule's runner and the pipeline's verification call,
returns the model's time instead of the emulator's wall clock.
"""

import argparse
import json
import platform
import signal
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description="TVM RPC server of one farm board")
    parser.add_argument("--tracker", required=True, help="HOST:PORT of the tracker")
    parser.add_argument("--key", required=True, help="device class key to register under")
    parser.add_argument("--name", required=True, help="board name from the inventory")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--emulated", action="store_true", help="timings here are not real")
    parser.add_argument("--modeled", metavar="LABEL",
                        help="time with the timing model qemu runs this server under, and say "
                             "so with LABEL (e.g. 'Cortex-A53 model v1')")
    parser.add_argument("--threads", type=int,
                        help="TVM worker threads (default: TVM's own choice, which is half the "
                             "logical CPUs on x86: one thread on a 2-vCPU machine)")
    args = parser.parse_args(argv)
    if args.threads:
        import os

        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM starts its pool

    import logging
    import socket

    import tvm
    import tvm_ffi
    from tvm.rpc import server as rpc_server

    listen_loop = _listen_loop(tvm, rpc_server)

    info = json.dumps({"name": args.name, "key": args.key, "emulated": args.emulated,
                       "machine": platform.machine(), "threads": args.threads,
                       "modeled": args.modeled})
    # Registered in this process, so every session forked from it answers too.
    tvm_ffi.register_global_func("edge_tvm.board_info", lambda: info, override=True)
    if args.modeled:
        clock = ModeledClock()
        clock.read()  # fails here, at start, when the timing model is not loaded
        tvm_ffi.register_global_func("runtime.RPCTimeEvaluator",
                                     _modeled_time_evaluator(clock, tvm_ffi), override=True)
    rpc_server.logger.setLevel(logging.ERROR)

    # TVM's rpc.Server runs this loop in a thread of a helper process and forks a session from
    # there; under qemu-user a fork from a multi-threaded process now and then left a session
    # hung. Here the loop runs in the main thread of a single-threaded process (same TVM, pinned).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = args.tracker.rsplit(":", 1)
    print(f"board {args.name} ({platform.machine()}) serving '{args.key}' on "
          f"{args.host}:{args.port} via tracker {args.tracker}", flush=True)
    _wait_for_tracker(host, int(port))
    # Returns only by raising when a session crashed (e.g. a kernel used an instruction this
    # CPU lacks): the process then exits non-zero and the farm sees a dead board.
    listen_loop(sock, args.port, args.key, (host, int(port)), None, None)
    return 1


def _wait_for_tracker(host: str, port: int, timeout_s: float = 60.0) -> None:
    """The farm starts boards while its tracker starts; TVM's own connect would retry only every
    5 s. Past the timeout, TVM's retries and its error take over."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


EDGE_SYSCALL = 0xED6E  # answered by rpc/timing_model.c; ENOSYS for the kernel
REPORT_MAGIC = 0x4544474554494D45
COUNTERS = ("cycles", "dram_bytes", "instructions", "loads", "stores", "l1_misses",
            "l2_misses", "prefetched")


class ModeledClock:
    """The timing model's counters, asked for with a system call only the model answers."""

    def __init__(self):
        import ctypes
        import functools
        import tempfile

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        # Lives as long as the server: the model writes its report here.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115
        command = functools.partial(libc.syscall, ctypes.c_long(EDGE_SYSCALL))
        fd = ctypes.c_long(self._file.fileno())
        # Bound now, so that a mark costs the guest a bare call.
        self.reset = functools.partial(command, ctypes.c_long(2), fd)  # empty caches, pipeline
        self.mark = functools.partial(command, ctypes.c_long(3), fd)
        self._report = functools.partial(command, ctypes.c_long(1), fd)

    def read(self) -> dict:
        """The counters now ('now') and at the last mark ('mark'), and the model's clock."""
        import os
        import struct

        size = 8 * (4 + 2 * len(COUNTERS))
        os.pwrite(self._file.fileno(), bytes(size), 0)
        self._report()
        values = struct.unpack(f"<{size // 8}Q", os.pread(self._file.fileno(), size, 0))
        if values[0] != REPORT_MAGIC:
            raise SystemExit("--modeled, but no timing model answered: start this server under "
                             "qemu-aarch64 -plugin timing_model.so (pipeline.farm.modeled)")
        n = len(COUNTERS)
        return {"version": values[1], "freq_mhz": values[2], "dram_bytes_per_kcycle": values[3],
                "now": dict(zip(COUNTERS, values[4:4 + n], strict=True)),
                "mark": dict(zip(COUNTERS, values[4 + n:4 + 2 * n], strict=True))}

    @staticmethod
    def seconds(report: dict) -> float:
        """Modeled time from the mark to the report: the core's cycles, or the DRAM traffic at
        the model's bandwidth if that takes longer."""
        now, mark = report["now"], report["mark"]
        cycles = now["cycles"] - mark["cycles"]
        traffic = (now["dram_bytes"] - mark["dram_bytes"]) * 1000 / max(
            report["dram_bytes_per_kcycle"], 1)
        return max(cycles, traffic) / (report["freq_mhz"] * 1e6)


def _modeled_time_evaluator(clock, tvm_ffi):
    """TVM's RPCTimeEvaluator with the timing model as its clock. As TVM's: the first call is
    not counted, then `repeat` results, each the mean of `number` calls; `min_repeat_ms` and
    the cool-downs are ignored (the model's time does not depend on how long the emulator
    ran); a cache flush before each repeat empties the model's caches. Every evaluation starts
    from empty caches, so the same call gives the same figure."""
    import struct

    def evaluator(mod, name, _device_type, _device_id, number, repeat, _min_repeat_ms,
                  _limit_zero_time_iterations, _cooldown_ms, _repeats_to_cooldown,
                  _cache_flush_bytes, f_preproc):
        func = mod.get_function(name) if mod is not None else tvm_ffi.get_global_func(name)
        number, repeat = max(int(number), 1), max(int(repeat), 1)

        def timed(*args):
            import gc

            # Python's collector runs when its allocation counts say so, which differs from
            # one session to the next: not inside a measurement.
            gc.collect()
            gc.disable()
            try:
                clock.reset()
                func(*args)
                results = []
                for _ in range(repeat):
                    if f_preproc:
                        clock.reset()
                    clock.mark()
                    for _ in range(number):
                        func(*args)
                    results.append(clock.seconds(clock.read()) / number)
            finally:
                gc.enable()
            return bytes(struct.pack(f"@{repeat}d", *results))

        return timed

    return evaluator


# TVM's RPC server loop is private: its signature is checked against the TVM this server was
# written for, so that another TVM fails here with a message instead of misbehaving later.
LISTEN_LOOP_PARAMETERS = ("sock", "port", "rpc_key", "tracker_addr", "load_library", "custom_addr")
TESTED_TVM = "0.27"


def _listen_loop(tvm, rpc_server):
    import inspect

    loop = getattr(rpc_server, "_listen_loop", None)
    found = tuple(inspect.signature(loop).parameters) if loop is not None else None
    if found != LISTEN_LOOP_PARAMETERS:
        raise SystemExit(
            f"board_server.py needs TVM {TESTED_TVM}'s private tvm.rpc.server._listen_loop"
            f"{LISTEN_LOOP_PARAMETERS}; this board's TVM {tvm.__version__} has "
            f"{found or 'none'}. Install the pipeline's TVM on the board: pip install "
            f"'apache-tvm[rpc]==0.27.0.post1' 'apache-tvm-ffi==0.1.14.post1'.")
    return loop


if __name__ == "__main__":
    sys.exit(main())
