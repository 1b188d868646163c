"""The README's main job on the committed tuning logs: EfficientNet-Lite0 for x86-nuc and host,
built, verified on a board of the embedded farm, top-1 on chelsea equal to PyTorch's."""

import json

import numpy as np
import pytest

from pipeline.artifact.manifest import check_hashes, read_manifest
from pipeline.artifact.tuning_logs import (
    buildable_device,
    check_target,
    count_records,
    file_hashes,
    log_dir,
    record_targets,
    repair,
)
from pipeline.base.devices import load_device, runs_target
from pipeline.base.errors import UserError
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.frontend.models import load_model
from pipeline.job.build_job import JobSpec, run_job

EGYPTIAN_CAT = 285


def _committed(device_name: str):
    """The device class as its committed logs build it, and whether this CPU can build them:
    `host` logs tuned on another CPU model build here only if this CPU runs all of its
    instructions (otherwise they are refused, and the test expects that)."""
    folder = log_dir(ArtifactKey(device_name, "efficientnet-lite0", Variant.FP32))
    device = buildable_device(load_device(device_name), folder)
    (logged,) = record_targets(folder)
    runs_here = device_name != "host" or runs_target(json.loads(logged))
    return device, folder, runs_here


@pytest.mark.parametrize("device_name", ["x86-nuc", "host"])
def test_committed_logs_meet_the_default_budget(device_name):
    """Otherwise the README's first command would start hours of tuning on a fresh machine."""
    device, folder, runs_here = _committed(device_name)
    assert count_records(folder) >= device.tuning.trials
    assert repair(folder).dropped == ()
    if runs_here:
        check_target(folder, device.target, device_name)
    else:
        with pytest.raises(UserError, match="tuned for another target"):
            check_target(folder, device.target, device_name)


@pytest.mark.slow
@pytest.mark.parametrize("device_name", ["x86-nuc", "host"])
def test_efficientnet_lite0_artifact_from_committed_logs(device_name, tmp_path, tmp_path_factory):
    from pipeline.farm.local import local_farm

    device, _, runs_here = _committed(device_name)
    model = load_model("efficientnet-lite0")
    with local_farm(device) as farm:
        if not runs_here:
            with pytest.raises(UserError, match="tuned for another target"):
                run_job(JobSpec(device, model, 0, farm.address, tmp_path / "artifact"))
            return
        result = run_job(JobSpec(device, model, 0, farm.address, tmp_path / "artifact"))
    manifest = read_manifest(result.artifact)
    assert check_hashes(result.artifact, manifest) == []
    check = manifest.verification
    assert check.top1_matches_framework and check.max_abs_error < 1e-3
    assert manifest.tuning.tuned_kernels >= manifest.tuning.total_kernels * 0.8
    assert manifest.tuning.log_sha256 == file_hashes(_committed(device_name)[1])
    # The board's output, not just the framework's, names the cat.
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(result.artifact / "lib.so")), tvm.cpu())
    logits = vm["main"](tvm.runtime.tensor(model.sample_input())).numpy()
    assert int(np.argmax(logits)) == EGYPTIAN_CAT
