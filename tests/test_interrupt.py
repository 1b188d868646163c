"""Ctrl-C in the middle of tuning keeps every measured trial, and a re-run resumes from them."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.artifact.tuning_logs import RECORDS, count_records, log_dir, repair
from pipeline.base.variant import ArtifactKey, Variant


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_the_rerun_resumes(tmp_path, host_farm):
    folder = log_dir(ArtifactKey("host", "tiny-cnn", Variant.FP32), tmp_path / "logs")
    records = folder / RECORDS
    cmd = [sys.executable, "-m", "pipeline.tune", "--device", "host", "--model", "tiny-cnn",
           "--trials", "400", "--tracker", str(host_farm), "--logs", str(tmp_path / "logs"),
           "--out", str(tmp_path / "artifact")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while count_records(folder) < 40:  # a few batches measured and recorded
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "tuning recorded nothing in 10 minutes"
        time.sleep(1)
    workers = _descendants(proc.pid)
    assert workers, "tuning runs its builder and runner in worker processes"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    kept = count_records(folder)
    time.sleep(2)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the job"
    assert proc.returncode == 130, err
    assert "interrupted" in err and kept >= 40
    assert repair(folder).dropped == ()  # no half-written line either
    assert not (tmp_path / "artifact").exists()

    # The re-run counts the kept trials toward the budget: with the budget set to what is in the
    # logs, it tunes nothing and goes straight to the build.
    rerun = subprocess.run([*cmd[:cmd.index("--trials") + 1], str(kept),
                            *cmd[cmd.index("--trials") + 2:]],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"budget met ({kept} trials" in rerun.stderr
    assert records.read_text().count("\n") == kept
    assert (tmp_path / "artifact" / "manifest.json").exists()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
