"""Transfer tuning: kernels with no records borrow the schedules of kernels of their kind from
the class's other committed logs, measured on a real board; the manifest says which."""

import shutil

import pytest

from pipeline.artifact.manifest import LOGS_DIRNAME, read_manifest
from pipeline.artifact.tuning_logs import (
    TRANSFERRED,
    file_hashes,
    forget_transferred,
    record_transferred,
    transferred,
)
from pipeline.base.paths import TUNING_LOGS
from pipeline.compile import transfer as transfer_stage
from pipeline.compile.transfer import fit_tiles
from pipeline.frontend.models import load_model
from pipeline.job.build_job import JobSpec, run_job
from pipeline.job.rebuild_job import rebuild

SOURCE = "x86-nuc/efficientnet-lite0-fp32"  # AVX2 code: every x86 CI machine runs it


@pytest.mark.parametrize(("extent", "factors", "expected"), [
    (112, [1, 2, 7, 8], [1, 2, 7, 8]),  # the shape it was tuned for: unchanged
    (56, [1, 2, 7, 8], [1, 1, 7, 8]),  # inner tiles kept, the outer ones shrink
    (96, [4, 3, 16], [2, 3, 16]),
    (40, [1, 7, 16], [1, 5, 8]),  # 16 does not divide 40: the largest divisor below it
    (7, [1, 1, 16], [1, 1, 7]),
    (1000, [1, 25, 40], [1, 25, 40]),
])
def test_tiles_are_refitted_to_the_new_extent(extent, factors, expected):
    refitted = fit_tiles(extent, factors)
    assert refitted == expected
    product = 1
    for f in refitted:
        product *= f
    assert product == extent


def test_tuning_a_kernel_ends_its_transferred_provenance(tmp_path):
    record_transferred(tmp_path, {"k1": {"from": "a"}, "k2": {"from": "b"}})
    forget_transferred(tmp_path, {"k1", "k3"})
    assert transferred(tmp_path) == {"k2": {"from": "b"}}
    assert transferred(tmp_path / "nothing") == {}


def test_a_new_model_is_built_with_schedules_transferred_from_the_class_logs(
        host_device, host_farm, tmp_path, monkeypatch):
    """A model with no logs, built with no tuning: its convolutions and its classifier get
    schedules from EfficientNet-Lite0's records (refitted, measured on the board), its mean has
    no kernel of its kind there and stays default; the build leaves the logs untouched, the
    artifact bundles what it used and rebuilds bit for bit from it."""
    # One candidate per kernel (the best record of the nearest shape) keeps the test short.
    monkeypatch.setattr(transfer_stage, "NEAREST_SOURCES", 1)
    monkeypatch.setattr(transfer_stage, "RECORDS_PER_SOURCE", 1)
    logs = tmp_path / "logs"
    shutil.copytree(TUNING_LOGS / SOURCE, logs / SOURCE, ignore=shutil.ignore_patterns(".lock"))
    before = file_hashes(logs / SOURCE)
    model = load_model("tests.transfer_models:small_mobile", (1, 3, 64, 64))
    result = run_job(JobSpec(host_device, model, 0, host_farm, tmp_path / "artifact",
                             log_root=logs))
    manifest = read_manifest(result.artifact)
    kernels = manifest.tuning.kernels
    moved = {name: how for name, how in kernels.items() if how.startswith("transferred")}
    assert any("group_conv2d" in how for how in moved.values()), kernels  # the depthwise
    assert any("matmul" in how for how in moved.values()), kernels  # the classifier
    assert sum("conv2d_nhwc" in how for how in moved.values()) >= 3, kernels
    assert all(how.startswith(f"transferred from {SOURCE} ") for how in moved.values())
    assert [how for name, how in kernels.items() if name.startswith("mean")] == ["default"]
    assert manifest.tuning.tuned_kernels == len(moved) + sum(
        how == "tuned" for how in kernels.values())
    check = manifest.verification
    assert check.top1_matches_framework and check.max_abs_error < 1e-4
    bundled = transferred(result.artifact / LOGS_DIRNAME)
    assert set(bundled) == set(moved) and all(v["records"] == 1 for v in bundled.values())
    assert TRANSFERRED in manifest.tuning.log_sha256
    assert file_hashes(logs / SOURCE) == before
    assert not (logs / "host").exists()  # a build writes no logs of its own
    assert rebuild(result.artifact, model).identical


def test_no_transfer_leaves_every_kernel_default(host_device, host_farm, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(TUNING_LOGS / SOURCE, logs / SOURCE, ignore=shutil.ignore_patterns(".lock"))
    model = load_model("tests.transfer_models:small_mobile", (1, 3, 64, 64))
    result = run_job(JobSpec(host_device, model, 0, host_farm, tmp_path / "artifact",
                             log_root=logs, transfer=False))
    kernels = read_manifest(result.artifact).tuning.kernels
    assert set(kernels.values()) == {"default"}
