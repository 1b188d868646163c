"""Ctrl-C in the middle of tuning keeps every measured trial, and a re-run resumes from them."""

import os
import signal
import subprocess
import sys
import time

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
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    kept = count_records(folder)
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
