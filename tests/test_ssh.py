"""SSH to boards with paramiko against a real sshd on 127.0.0.1: host keys, push, processes."""

import hashlib
import subprocess

import pytest

from pipeline.base.errors import UserError
from pipeline.farm import ssh


def test_unknown_host_key_is_refused_by_default(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(UserError, match="not in .*known_hosts.*--accept-new-host-key"):
        ssh.connect(sshd.access(known_hosts))
    assert not known_hosts.exists()  # nothing was trusted behind the user's back


def test_opt_in_records_a_new_key_and_a_changed_key_is_always_refused(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    ssh.connect(sshd.access(known_hosts), accept_new_host_key=True).close()
    key_type, key_b64 = sshd.host_key_line.split()[1:]
    assert key_b64 in known_hosts.read_text()
    with ssh.session(sshd.access(known_hosts)) as board:  # now known: no opt-in needed
        assert board.check("echo hello", "echo").strip() == "hello"

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[1]
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {other}\n")
    for opt_in in (False, True):
        with pytest.raises(UserError, match="not the one recorded"):
            ssh.connect(sshd.access(known_hosts), accept_new_host_key=opt_in)


def test_push_hash_and_detached_process_lifecycle(sshd, tmp_path):
    folder = tmp_path / "payload"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\x00\x01" * 1000)
    (folder / "sub" / "b.txt").write_text("board\n")
    workdir = str(tmp_path / "remote")
    with ssh.session(sshd.access(sshd.known_hosts(tmp_path / "kh"), python="/usr/bin/python3",
                                 workdir=workdir)) as board:
        board.push(folder, f"{workdir}/copy")
        hashes = ssh.sha256_remote(board, ["a.bin", "sub/b.txt"], f"{workdir}/copy")
        assert hashes == {p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
                          for p in ("a.bin", "sub/b.txt")}
        pid = board.start_detached(workdir, ["sleep", "300"], "sleep.log")
        assert board.is_alive(pid)
        board.stop(pid)
        assert not board.is_alive(pid)


def test_unreachable_board_names_the_command_to_check(sshd, tmp_path):
    from dataclasses import replace

    from pipeline.farm.tracker import free_port

    access = replace(sshd.access(sshd.known_hosts(tmp_path / "kh")), port=free_port())
    with pytest.raises(UserError, match=f"Cannot reach .*ssh -p {access.port}"):
        ssh.connect(access)


def test_a_command_that_never_ends_fails_after_its_timeout_naming_the_board(sshd, tmp_path):
    import time

    with ssh.session(sshd.access(sshd.known_hosts(tmp_path / "kh"))) as board:
        started = time.monotonic()
        with pytest.raises(UserError, match=rf"`sleep 30` on .*@127.0.0.1:{sshd.port} failed: "
                                            r"no answer within 1 s"):
            board.run("sleep 30", timeout_s=1)
        assert time.monotonic() - started < 10


def test_a_port_that_accepts_and_never_speaks_ssh_fails_after_the_connect_timeout(
        sshd, tmp_path, monkeypatch):
    import socket
    import time
    from dataclasses import replace

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setattr(ssh, "CONNECT_TIMEOUT_S", 1)
    access = replace(sshd.access(sshd.known_hosts(tmp_path / "kh")),
                     port=silent.getsockname()[1])
    started = time.monotonic()
    try:
        with pytest.raises(UserError, match=rf"SSH to .*127.0.0.1:{access.port} failed"):
            ssh.connect(access)
    finally:
        silent.close()
    assert time.monotonic() - started < 10
