"""The farm: inventory validation, and a real tracker with emulated arm-a53 boards, one of them
reached over SSH (a loopback sshd whose board Python is the qemu-run aarch64 one)."""

import time

import pytest
import yaml

from pipeline.base.errors import UserError
from pipeline.farm.emulated import require_ready
from pipeline.farm.inventory import parse_inventory
from pipeline.farm.lifecycle import Farm, class_counts
from rpc import farm as farm_cli


def _inventory(sshd, tmp_path, **health):
    known_hosts = sshd.known_hosts(tmp_path / "known_hosts")
    raw = {
        "tracker": {"host": "127.0.0.1", "port": _free_port()},
        "health": {"max_restarts": 1, "window_s": 600, "start_timeout_s": 120, **health},
        "boards": [
            {"name": "phone-ssh", "class": "arm-a53", "emulated": True, "rpc_port": _free_port(),
             "ssh": {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                     "key": str(sshd.user_key), "python": str(require_ready("cortex-a53")),
                     "workdir": str(tmp_path / "board-home"), "known_hosts": str(known_hosts),
                     "bind": "127.0.0.1"}},
            {"name": "phone-local", "class": "arm-a53", "emulated": True},
        ],
    }
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _free_port():
    from pipeline.farm.tracker import free_port

    return free_port()


@pytest.mark.parametrize("change, message", [
    (lambda r: r["boards"][0].update(color="red"), "boards\\[0\\].color' is unknown"),
    (lambda r: r["boards"].append(dict(r["boards"][0])), "appears twice"),
    (lambda r: r["boards"][0].update({"class": "arm-a99"}), "Unknown device 'arm-a99'"),
    (lambda r: r["boards"][0].pop("emulated"), "add `emulated: true`"),
    (lambda r: r.update(tracker={"host": "0.0.0.0"}), "advertise' is needed"),
    (lambda r: r["boards"][1]["ssh"].update(python="python3"), "must be an absolute path"),
    (lambda r: r["boards"][1]["ssh"].update(key="/nonexistent/key"), "does not exist"),
    (lambda r: r["boards"][0].update(timing="fast"), "must be measured, emulated or modeled"),
    (lambda r: r["boards"][1].update(timing="modeled"), "modeled is for local emulated boards"),
    (lambda r: r["boards"].append({"name": "c", "class": "arm-a53", "emulated": True,
                                   "timing": "modeled"}), "mixes modeled and other boards"),
])
def test_inventory_mistakes_are_named(change, message, tmp_path):
    key = tmp_path / "id"
    key.write_text("not used")
    raw = {"boards": [{"name": "a", "class": "arm-a53", "emulated": True},
                      {"name": "b", "class": "rpi4", "ssh": {"host": "10.0.0.2", "user": "pi",
                                                             "key": str(key),
                                                             "python": "/usr/bin/python3"}}]}
    parse_inventory(raw)  # valid as written
    change(raw)
    with pytest.raises(UserError, match=message):
        parse_inventory(raw)


def test_farm_cli_refuses_an_unknown_host_key_and_leaves_nothing_running(sshd, tmp_path, capsys):
    path = _inventory(sshd, tmp_path)
    (tmp_path / "known_hosts").write_text("")  # the board's key was never recorded
    state = tmp_path / "state"
    assert farm_cli.main(["up", "--inventory", str(path), "--state-dir", str(state)]) == 2
    assert "--accept-new-host-key" in capsys.readouterr().err
    assert not (state / "state.json").exists()


@pytest.mark.slow
def test_farm_up_status_restart_quarantine_down(sshd, tmp_path, capsys):
    path = _inventory(sshd, tmp_path)
    state = tmp_path / "state"
    args = ["--inventory", str(path), "--state-dir", str(state)]
    assert farm_cli.main(["up", *args]) == 0
    farm = Farm(farm_cli.load_inventory(path), state)
    assert {s.name: s.state for s in farm.status()} == {"phone-ssh": "up", "phone-local": "up"}
    assert class_counts(farm, farm.status())["arm-a53"]["free"] == 2
    assert farm_cli.main(["status", *args]) == 0
    assert "arm-a53: 2 free" in capsys.readouterr().out

    # A crash (as when a kernel uses an instruction the CPU lacks): detected and restarted.
    farm.kill_board("phone-ssh")
    assert {s.name: s.state for s in farm.status()}["phone-ssh"] == "dead"
    assert any("phone-ssh was dead: restarted" in e for e in farm.heal())
    _wait_state(farm, "phone-ssh", "up")
    # Dies again within the window: max_restarts is 1, so it is quarantined, not restarted.
    farm.kill_board("phone-ssh")
    assert any("phone-ssh died 2 times" in e for e in farm.heal())
    statuses = {s.name: s.state for s in farm.status()}
    assert statuses == {"phone-ssh": "quarantined", "phone-local": "up"}

    pids = {name: b.pid for name, b in farm.state.boards.items()}
    assert farm_cli.main(["down", *args]) == 0
    from pipeline.farm import ssh
    from pipeline.farm.processes import local_alive

    assert not local_alive(pids["phone-local"])
    with ssh.session(farm.inventory.board("phone-ssh").ssh) as remote:
        assert not remote.is_alive(pids["phone-ssh"])
    assert not (state / "state.json").exists()


def _wait_state(farm, name, wanted, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if {s.name: s.state for s in farm.status()}[name] == wanted:
            return
        time.sleep(1)
    raise AssertionError(f"{name} never became {wanted}")


@pytest.mark.slow
def test_a_kernel_with_an_instruction_the_board_lacks_kills_it_and_the_farm_restarts_it(tmp_path):
    """fp16 arithmetic (ARMv8.2) on the Cortex-A53 board: SIGILL, as on the real part."""
    import numpy as np
    import tvm
    from tvm import rpc, te

    from pipeline.base.devices import load_device
    from pipeline.farm.local import local_farm

    n = 64
    a = te.placeholder((n,), "float16", name="a")
    b = te.compute((n,), lambda i: a[i] * a[i] + a[i], name="b")
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55",
              "mattr": ["+neon", "+fullfp16"]}
    lib = tvm.compile(te.create_prim_func([a, b]).with_attr("global_symbol", "fp16_square_add"),
                      target=target)
    path = tmp_path / "fp16.so"
    lib.export_library(str(path), cc="aarch64-linux-gnu-g++")

    with local_farm(load_device("arm-a53")) as farm:
        remote = rpc.connect_tracker(farm.address.host, farm.address.port).request(
            "arm-a53", session_timeout=120)
        remote.upload(str(path))
        func = remote.load_module(path.name)["fp16_square_add"]
        dev = remote.cpu()
        x = tvm.runtime.tensor(np.ones(n, "float16"), dev)
        with pytest.raises(Exception):  # noqa: B017 - the session dies with the board
            func(x, tvm.runtime.tensor(np.zeros(n, "float16"), dev))
        deadline = time.monotonic() + 60  # the watching farm sees it dead and restarts it
        while not farm.state.boards["arm-a53-1"].failures and time.monotonic() < deadline:
            time.sleep(0.5)
        assert farm.state.boards["arm-a53-1"].failures, "the crashed board was never noticed"
        _wait_state(farm, "arm-a53-1", "up")


def test_board_server_checks_the_private_tvm_loop_it_calls():
    """The board server calls TVM's private `_listen_loop`: a TVM whose loop differs is refused
    with a message naming the versions, not run with misplaced arguments."""
    import types

    import tvm
    from tvm.rpc import server

    from rpc import board_server

    assert board_server._listen_loop(tvm, server) is server._listen_loop
    other = types.SimpleNamespace(_listen_loop=lambda sock, port, key, tracker: None)
    with pytest.raises(SystemExit, match=r"TVM 0\.27's private.*has \('sock', 'port', 'key'"):
        board_server._listen_loop(tvm, other)
    with pytest.raises(SystemExit, match="has none"):
        board_server._listen_loop(tvm, types.SimpleNamespace())
