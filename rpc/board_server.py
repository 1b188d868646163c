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
    args = parser.parse_args(argv)

    from tvm import rpc

    info = json.dumps({"name": args.name, "key": args.key, "emulated": args.emulated,
                       "machine": platform.machine()})

    def register_board_info():
        import tvm_ffi

        tvm_ffi.register_global_func("edge_tvm.board_info", lambda: info, override=True)

    host, port = args.tracker.rsplit(":", 1)
    server = rpc.Server(args.host, args.port, args.port + 1, key=args.key,
                        tracker_addr=(host, int(port)), silent=True,
                        server_init_callback=register_board_info)
    signal.signal(signal.SIGTERM, lambda *_: (server.terminate(), sys.exit(0)))
    print(f"board {args.name} ({platform.machine()}) serving '{args.key}' on "
          f"{args.host}:{server.port} via tracker {args.tracker}", flush=True)
    server.proc.join()
    # The server only returns when it crashed (e.g. a kernel used an instruction this CPU
    # lacks): exit non-zero so the farm sees a dead board.
    return 1


if __name__ == "__main__":
    sys.exit(main())
