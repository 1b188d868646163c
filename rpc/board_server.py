"""TVM's RPC server as one of our boards: pushed to every board and run with its Python.

Standalone on purpose (stdlib + tvm only): a board has TVM and nothing of this project. Beside
TVM's own functions the server answers `edge_tvm.board_info`, so that the pipeline can tell what
it measured on (an emulated board's timings are not performance figures).
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
                       "machine": platform.machine(), "threads": args.threads})
    # Registered in this process, so every session forked from it answers too.
    tvm_ffi.register_global_func("edge_tvm.board_info", lambda: info, override=True)
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
    # Returns only by raising when a session crashed (e.g. a kernel used an instruction this
    # CPU lacks): the process then exits non-zero and the farm sees a dead board.
    listen_loop(sock, args.port, args.key, (host, int(port)), None, None)
    return 1


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
