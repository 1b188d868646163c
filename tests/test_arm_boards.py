"""arm-a53 end to end on emulated boards: tune over a real tracker with two boards (one over
SSH), lose a board mid-run, build an aarch64 library, verify it on a board, deploy it over SSH."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.artifact.manifest import LIB_NAME, read_manifest
from pipeline.artifact.tuning_logs import RECORDS, log_dir
from pipeline.base.devices import CONFIG_DIR, load_device
from pipeline.base.errors import UserError
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.farm.inventory import load_inventory
from pipeline.farm.lifecycle import Farm
from pipeline.job.build_job import JobSpec, run_job
from pipeline.job.deploy_job import deploy
from tests.test_farm import _inventory

pytestmark = pytest.mark.slow
TRIALS, PER_TASK = 24, 8  # three batches of 8 over tiny-cnn's kernels


@pytest.fixture(scope="module")
def arm_run(sshd, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arm")
    config = yaml.safe_load((CONFIG_DIR / "arm-a53.yaml").read_text())
    config["tuning"] = {"trials": TRIALS, "trials_per_task": PER_TASK}
    (tmp / "arm-a53.yaml").write_text(yaml.safe_dump(config))
    device = load_device(str(tmp / "arm-a53.yaml"))
    inventory = load_inventory(_inventory(sshd, tmp))
    farm = Farm(inventory, tmp / "state")
    records = log_dir(ArtifactKey("arm-a53", tiny_model.name, Variant.FP32), tmp / "logs") / RECORDS
    seen_at_kill: list[str] = []

    def kill_after_first_batch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            lines = records.read_text().splitlines() if records.exists() else []
            if len(lines) >= PER_TASK:
                seen_at_kill.extend(lines)
                farm.kill_board("phone-ssh")  # a crash: the farm is not watching
                return
            time.sleep(0.5)

    farm.up()
    try:
        killer = threading.Thread(target=kill_after_first_batch, daemon=True)
        killer.start()
        result = run_job(JobSpec(device, tiny_model, TRIALS, farm.address, tmp / "artifact",
                         tmp / "logs"))
        killer.join(timeout=5)
        statuses = {s.name: s.state for s in farm.status()}
        farm.heal()  # the crashed board comes back for the deploy test
        yield result, seen_at_kill, records.read_text().splitlines(), statuses, inventory
    finally:
        farm.down()


def test_tuning_survives_a_board_dying_and_keeps_every_finished_trial(arm_run):
    result, seen_at_kill, final, statuses, _ = arm_run
    assert len(seen_at_kill) >= PER_TASK, "the board was never killed"
    assert statuses["phone-ssh"] == "dead" and statuses["phone-local"] == "up"
    assert set(seen_at_kill) <= set(final)  # nothing measured before the crash was lost
    assert len(final) >= TRIALS > len(seen_at_kill)  # tuning went on on the remaining board
    valid = [json.loads(line)[1][1] for line in final]
    assert sum(1 for secs in valid if secs and secs[0] < 1e9) >= TRIALS - PER_TASK
    assert result.manifest.tuning.tuned_kernels >= 1


def test_artifact_is_an_aarch64_library_verified_on_an_emulated_board(arm_run):
    result, *_ = arm_run
    elf = (result.artifact / LIB_NAME).read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    check = read_manifest(result.artifact).verification
    assert check.board in ("phone-ssh", "phone-local") and check.emulated
    assert check.latency_ms_median is None  # emulated timings are never reported
    assert check.max_abs_error < 1e-4 and check.top1_matches_framework
    assert result.manifest.device.target["mcpu"] == "cortex-a53"


def test_deploy_checks_hashes_on_the_board_and_runs_a_smoke_inference(arm_run, tmp_path,
                                                                      monkeypatch):
    result, *_, inventory = arm_run
    board = inventory.board("phone-ssh")
    # Another deployment of the class on the board: deploying `.` replaces only its own folder.
    neighbour = Path(board.ssh.workdir) / "artifacts" / "arm-a53" / "other-model-fp32"
    neighbour.mkdir(parents=True)
    monkeypatch.chdir(result.artifact)
    deployed = deploy(Path("."), board)
    assert deployed.remote_dir.endswith("/artifacts/arm-a53/tiny-cnn-fp32")
    assert neighbour.is_dir()
    assert deployed.files_checked == len(result.manifest.files)
    assert deployed.max_abs_error is not None and deployed.max_abs_error < 1e-4
    assert deployed.output_shape == tuple(result.manifest.model.output.shape)

    tampered = tmp_path / "tampered"
    shutil.copytree(result.artifact, tampered)
    lib = tampered / LIB_NAME
    lib.write_bytes(lib.read_bytes()[:-16])
    with pytest.raises(UserError, match="lib.so differ"):
        deploy(tampered, board)
    with pytest.raises(UserError, match="has no ssh section"):
        deploy(result.artifact, inventory.board("phone-local"))
