"""The holes a bad-input and fault probe found, each re-run: exit 2 with one paragraph, nothing
of the user's destroyed, nothing written outside the command's own outputs, no code run that an
artifact or a config names."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import build as build_cli
from pipeline import rebuild as rebuild_cli
from pipeline import tune as tune_cli
from pipeline.artifact.manifest import MANIFEST_NAME
from pipeline.artifact.store import pack
from pipeline.artifact.tuning_logs import exclusive
from pipeline.base.devices import CONFIG_DIR
from pipeline.base.errors import UserError
from pipeline.farm.inventory import parse_inventory
from pipeline.farm.tracker import free_port
from rpc import farm as farm_cli

TINY = ["--device", "host", "--model", "tiny-cnn"]


def _fails_clearly(main, argv, capsys, message):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()  # progress lines may come first; the error is one line
    assert lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1
    assert "Traceback" not in err and re.search(message, lines[-1]), err
    return err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, host_farm):
    """A real tiny-cnn artifact (built from empty logs), to tamper with copies of."""
    root = tmp_path_factory.mktemp("artifact")
    assert build_cli.main([*TINY, "--tracker", str(host_farm), "--logs", str(root / "logs"),
                           "--out", str(root / "tiny")]) == 0
    return root / "tiny"


def _tampered(artifact, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest = change(manifest)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


# -- outputs are never destructive ---------------------------------------------------------

def test_out_refuses_a_folder_that_is_not_an_artifact_and_keeps_it(tmp_path, capsys, host_farm):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"precious")
    _fails_clearly(build_cli.main, [*TINY, "--tracker", str(host_farm), "--out", str(mine),
                                    "--logs", str(tmp_path / "logs")], capsys,
                   "holds files that are not an artifact")
    assert [p.name for p in mine.iterdir()] == ["cat.jpg"]
    assert (mine / "cat.jpg").read_bytes() == b"precious"
    assert not (tmp_path / "logs").exists()


def test_out_refuses_a_file_and_an_artifact_of_another_key(tmp_path, capsys, artifact):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    _fails_clearly(build_cli.main, [*TINY, "--out", str(note)], capsys, "is not a folder")
    assert note.read_text() == "mine" and not list(tmp_path.glob(".notes*"))
    _fails_clearly(build_cli.main, ["--device", "host", "--model", "tiny-cnn", "--quantize",
                                    "int8", "--out", str(artifact)], capsys,
                   "holds an artifact of host/tiny-cnn-fp32")


@pytest.mark.parametrize("flag", ["--out", "--logs"])
def test_paths_under_a_regular_file_are_refused_before_any_work(tmp_path, capsys, flag):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = [*TINY, "--trials", "8", "--out", str(tmp_path / "out"), "--logs",
            str(tmp_path / "logs"), flag, str(blocker / "sub")]
    started = time.monotonic()
    _fails_clearly(tune_cli.main, argv, capsys, "is not a folder")
    assert time.monotonic() - started < 20  # refused up front, not after a build
    assert blocker.read_text() == "x"


# -- artifacts are data, never code ---------------------------------------------------------

def test_rebuild_never_imports_a_module_the_manifest_names(artifact, tmp_path, capsys,
                                                           monkeypatch):
    (tmp_path / "evil.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('x')\n"
        "def factory():\n    raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def as_torch(m):
        m["model"].update(source="torch", spec="evil:factory")
        return m

    copy = _tampered(artifact, tmp_path, as_torch)
    _fails_clearly(rebuild_cli.main, [str(copy)], capsys, "cannot be loaded from the artifact")
    assert not (tmp_path / "RAN").exists()


@pytest.mark.parametrize("change, message", [
    (lambda m: [], "a manifest is a JSON object, not list"),
    (lambda m: {**m, "files": "abc"}, "Manifest.files must be an object"),
    (lambda m: {**m, "files": {}}, "must list lib.so"),
    (lambda m: {**m, "files": {**m["files"], "../outside.txt": "0" * 64}}, "outside.txt"),
    (lambda m: {**m, "tuning": {**m["tuning"], "trials": "many"}}, "trials must be int"),
    (lambda m: {**m, "device": {**m["device"], "name": "../../.."}}, "not a plain name"),
    (lambda m: {**m, "variant": "int4"}, "'int4' is not one of"),
])
def test_a_tampered_manifest_is_named_and_nothing_runs(artifact, tmp_path, capsys, change,
                                                       message):
    copy = _tampered(artifact, tmp_path, change)
    _fails_clearly(rebuild_cli.main, [str(copy)], capsys, message)
    with pytest.raises(UserError, match=message):
        pack(copy, tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()


# -- configuration values are type-checked at load -------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    ("capabilities: [int8, avx2]", "capabilities: null", "'capabilities' must be a list"),
    ("mcpu: x86-64-v3", "mcpu: x86-64-v3\n  num-cores: four", "target.num-cores' must be a whole"),
    ("cross_compiler: g++", "cross_compiler: 5", "'cross_compiler' must be a string"),
    ("cores: 4", "cores: true", "'cores' must be a whole number"),
    ("trials: 1664", "trials: 3.9", "'tuning.trials' must be a whole number"),
    ("mcpu: x86-64-v3", "mcpu: x86-64-v3\n  mattr: '+avx2'", "'target.mattr' must be a list"),
])
def test_device_yaml_values_of_the_wrong_type_are_named(tmp_path, capsys, old, new, message):
    text = (CONFIG_DIR / "x86-nuc.yaml").read_text()
    assert old in text
    (tmp_path / "x86-nuc.yaml").write_text(text.replace(old, new))
    _fails_clearly(build_cli.main, ["--device", str(tmp_path / "x86-nuc.yaml"), "--model",
                                    "tiny-cnn", "--out", str(tmp_path / "out")], capsys, message)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["tracker"].update(port=True), "tracker.port' must be a port"),
    (lambda r: r["boards"][0].update(name="../../escape"), "not a plain name"),
    (lambda r: r["boards"][0].update({"class": "../device_configs/host.yaml"}),
     "is a file name"),
])
def test_inventory_values_that_would_be_paths_or_wrong_types(change, message):
    raw = {"tracker": {"host": "127.0.0.1", "port": 9190},
           "boards": [{"name": "a", "class": "arm-a53", "emulated": True}]}
    change(raw)
    with pytest.raises(UserError, match=message):
        parse_inventory(raw)


def test_a_calibration_file_without_inputs(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "none.npy", np.zeros((0, 3, 32, 32), "float32"))
    _fails_clearly(build_cli.main, [*TINY, "--quantize", "int8", "--calibration",
                                    str(tmp_path / "none.npy"), "--out", str(tmp_path / "o")],
                   capsys, "holds no inputs")


def test_an_absurd_trial_budget_is_refused_at_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune_cli.main([*TINY, "--trials", "1" + "0" * 23])
    assert exit_info.value.code == 2 and "whole number from 0" in capsys.readouterr().err


# -- the farm owns exactly its own processes --------------------------------------------------

def _inventory(tmp_path, port):
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump({"tracker": {"host": "127.0.0.1", "port": port},
                                    "boards": [{"name": "nuc", "class": "x86-nuc"}]}))
    return path


def test_farm_down_leaves_alone_a_process_it_did_not_start(tmp_path, capsys):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / "state.json").write_text(json.dumps(
            {"tracker_pid": stranger.pid, "tracker_port": 1, "tracker_started": 1, "boards": {}}))
        argv = ["down", "--inventory", str(_inventory(tmp_path, free_port())), "--state-dir",
                str(state)]
        assert farm_cli.main(argv) == 0
        assert "no longer the process this farm started" in capsys.readouterr().err
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_farm_state_that_is_not_a_state_file(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("[]")
    _fails_clearly(farm_cli.main, ["status", "--inventory", str(_inventory(tmp_path, 1)),
                                   "--state-dir", str(state)], capsys, "not a farm state file")


def test_farm_up_refuses_an_occupied_port(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _fails_clearly(farm_cli.main, ["up", "--inventory", str(_inventory(tmp_path, port)),
                                       "--state-dir", str(tmp_path / "state")], capsys,
                       f"Port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "state" / "state.json").exists()


def test_a_tracker_that_never_answers_is_an_error_naming_it(tmp_path, capsys, monkeypatch):
    from pipeline.farm import tracker

    monkeypatch.setattr(tracker, "SUMMARY_TIMEOUT_S", 2.0)
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        started = time.monotonic()
        _fails_clearly(build_cli.main, [*TINY, "--tracker", address, "--out",
                                        str(tmp_path / "o"), "--logs", str(tmp_path / "logs")],
                       capsys, f"tracker at {address} does not answer")
        assert time.monotonic() - started < 60


# -- tuning logs: one tuner at a time ---------------------------------------------------------

def test_a_second_tuner_on_the_same_logs_is_refused(tmp_path, capsys, host_farm):
    folder = tmp_path / "logs" / "host" / "tiny-cnn-fp32"
    with exclusive(folder):
        _fails_clearly(tune_cli.main, [*TINY, "--trials", "8", "--tracker", str(host_farm),
                                       "--logs", str(tmp_path / "logs"), "--out",
                                       str(tmp_path / "o")], capsys,
                       rf"pipeline.tune \(pid {os.getpid()}\) is tuning into")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_tuners_on_one_folder_the_second_is_refused_and_after_both_each_record_is_once(
        tmp_path, capsys, host_farm):
    from pipeline.artifact.tuning_logs import count_records, open_database

    logs, folder = tmp_path / "logs", tmp_path / "logs" / "host" / "tiny-cnn-fp32"
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tune", *TINY, "--trials", "16", "--tracker",
         str(host_farm), "--logs", str(logs), "--out", str(tmp_path / "a")],
        stderr=subprocess.PIPE, text=True)
    for line in first.stderr:
        if line.startswith("tuning "):
            break
    second = [*TINY, "--tracker", str(host_farm), "--logs", str(logs), "--out",
              str(tmp_path / "b")]
    _fails_clearly(tune_cli.main, [*second, "--trials", "64"], capsys,
                   rf"pipeline.tune \(pid {first.pid}\) is tuning into")
    rest = first.stderr.read()
    assert first.wait(timeout=600) == 0, rest
    path = folder / "database_tuning_record.json"
    first_records = path.read_text().splitlines()
    assert len(first_records) >= 16  # a budget is met batch by batch, so it may be passed
    target = len(first_records) + 8
    assert tune_cli.main([*second, "--trials", str(target)]) == 0  # resumes from the first's
    records = path.read_text().splitlines()
    workloads = (folder / "database_workload.json").read_text().splitlines()
    assert records[:len(first_records)] == first_records and len(records) >= target
    assert len(records) == len(set(records)) and len(workloads) == len(set(workloads))
    assert len(open_database(folder)) == count_records(folder) == len(records)


# -- a killed tuner takes its embedded farm with it -------------------------------------------

@pytest.mark.slow
def test_kill_9_of_a_tuner_stops_its_farm_and_the_rerun_resumes(tmp_path):
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "pipeline.tune", *TINY, "--trials", "48", "--logs", str(logs),
           "--out", str(tmp_path / "o")]
    records = logs / "host" / "tiny-cnn-fp32" / "database_tuning_record.json"
    tuner = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    deadline = time.monotonic() + 600
    for line in tuner.stderr:
        pids += [int(p) for p in re.findall(r"\bpid (\d+)", line)]
        if line.startswith("[") and "trials]" in line or time.monotonic() > deadline:
            break
    assert pids, "the embedded farm's board never started"
    os.kill(tuner.pid, signal.SIGKILL)
    tuner.wait()
    saved = records.read_text().count("\n")
    assert saved >= 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "the farm outlived its tuner"
    rerun = subprocess.run([*cmd[:cmd.index("--trials") + 1], str(saved), *cmd[
        cmd.index("--trials") + 2:]], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "budget met" in rerun.stderr and records.read_text().count("\n") == saved


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_a_full_disk_stops_tuning_and_the_saved_records_load(tmp_path, capsys, host_farm):
    """MetaSchedule's JSON database ignores a failed append: the tuner compares what reached
    the logs with what it measured, and stops with an error instead of counting lost trials."""
    from pipeline.artifact.tuning_logs import count_records, open_database, repair

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        # The tiny model's workloads take ~470 KB and each record ~9 KB: room for a few.
        (disk / "filler").write_bytes(b"\0" * (free - 600 * 1024))
        err = _fails_clearly(tune_cli.main, [*TINY, "--trials", "32", "--tracker",
                                             str(host_farm), "--logs", str(disk / "logs"),
                                             "--out", str(tmp_path / "o")], capsys,
                             r"measured trials did not reach .*disk full")
        folder = disk / "logs" / "host" / "tiny-cnn-fp32"
        (disk / "filler").unlink()
        repair(folder)
        saved = count_records(folder)
        assert 0 < saved < 32, err
        assert len(open_database(folder)) == saved
        assert not (tmp_path / "o").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_second_sigterm_ends_the_tuner_at_once_and_its_farm_with_it(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.tune", *TINY, "--trials", "64", "--logs",
           str(tmp_path / "logs"), "--out", str(tmp_path / "o")]
    tuner = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    for line in tuner.stderr:
        pids += [int(p) for p in re.findall(r"\bpid (\d+)", line)]
        if line.startswith("tuning "):
            break
    time.sleep(3)  # the signal handlers are in place once tuning has begun
    tuner.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    tuner.send_signal(signal.SIGTERM)
    assert tuner.wait(timeout=30) == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert pids and not [p for p in pids if _alive(p)]


def test_inventory_values_reach_the_board_shell_quoted(sshd, tmp_path, capsys):
    """`workdir: "w; touch MARKER"` names a folder on the board; it does not run a command.
    The board here is this machine over SSH (an x86-nuc board with this Python)."""
    marker = tmp_path / "MARKER"
    workdir = f"{tmp_path}/w; touch {marker}"
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(yaml.safe_dump({
        "tracker": {"host": "127.0.0.1", "port": free_port()},
        "boards": [{"name": "nuc-ssh", "class": "x86-nuc", "rpc_port": free_port(),
                    "ssh": {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                            "key": str(sshd.user_key), "python": sys.executable,
                            "workdir": workdir, "bind": "127.0.0.1",
                            "known_hosts": str(sshd.known_hosts(tmp_path / "kh"))}}]}))
    argv = ["--inventory", str(inventory), "--state-dir", str(tmp_path / "state")]
    try:
        assert farm_cli.main(["up", *argv]) == 0, capsys.readouterr().err
        assert "nuc-ssh" in capsys.readouterr().out
        assert Path(workdir, "board_server.py").is_file()
        assert not marker.exists()
    finally:
        farm_cli.main(["down", *argv])


@pytest.mark.slow
def test_a_tracker_that_dies_mid_tuning_stops_the_run_and_keeps_its_records(tmp_path,
                                                                           host_device):
    from pipeline.farm.local import local_farm
    from pipeline.farm.processes import kill_group

    records = tmp_path / "logs" / "host" / "tiny-cnn-fp32" / "database_tuning_record.json"
    with local_farm(host_device) as farm:
        cmd = [sys.executable, "-m", "pipeline.tune", *TINY, "--trials", "96", "--tracker",
               str(farm.address), "--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "o")]
        tuner = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PIPELINE_TRACKER_GRACE_S": "15"})
        for line in tuner.stderr:
            if line.startswith("[") and "trials]" in line:
                break
        saved = records.read_text().count("\n")
        kill_group(farm.state.tracker_pid, farm.state.tracker_started)
        started = time.monotonic()
        tuner.wait(timeout=300)
        assert time.monotonic() - started < 90  # its grace, then it leaves
        err = tuner.stderr.read()
        assert tuner.returncode == 2, err
        assert f"tracker at {farm.address} does not answer" in err and "resume" in err
    assert saved >= 1 and records.read_text().count("\n") >= saved
    assert not (tmp_path / "o").exists()
