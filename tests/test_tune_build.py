"""Tune a tiny model over a real loopback tracker + RPC server, build, verify, package, rebuild."""

import json
import logging
import os

import numpy as np
import pytest

from pipeline.artifact.manifest import LIB_NAME, check_hashes, read_manifest
from pipeline.artifact.tuning_logs import (
    RECORDS,
    WORKLOADS,
    check_target,
    count_records,
    log_dir,
    open_database,
    repair,
)
from pipeline.base.errors import UserError
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.compile.lowering import lower
from pipeline.compile.tuning import tune
from pipeline.frontend.importer import import_model
from pipeline.job.build_job import JobSpec, run_job
from pipeline.job.rebuild_job import rebuild

TRIALS = 16


class _Unnamed(logging.Handler):
    """A handler as applications (and pytest 9) attach them: no name."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, host_device, tiny_model, host_farm):
    """One real tuning run of tiny-cnn (16 trials) into a fresh log root, then the full job,
    with an unnamed handler of someone else's on MetaSchedule's logger (MetaSchedule's own
    logger set-up crashed on one)."""
    root = tmp_path_factory.mktemp("logs")
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    metaschedule = logging.getLogger("tvm.s_tir.meta_schedule")
    foreign, level = _Unnamed(), metaschedule.level
    metaschedule.addHandler(foreign)
    metaschedule.setLevel(logging.INFO)
    try:
        result = run_job(JobSpec(host_device, tiny_model, TRIALS, host_farm, out, root))
    finally:
        metaschedule.removeHandler(foreign)
        metaschedule.setLevel(level)
    return root, out, result, foreign


def test_tuning_leaves_a_foreign_handler_in_place_and_feeds_it(tuned):
    foreign = tuned[3]
    assert foreign.get_name() is None
    # MetaSchedule's task scheduler reports each batch through the logger tree we keep intact.
    assert any("Sending" in m or "Task" in m or "trial" in m.lower() for m in foreign.messages), \
        foreign.messages[:5]


def test_tuning_writes_measured_records_for_the_host_target(tuned, host_device, tiny_model):
    root = tuned[0]
    folder = log_dir(ArtifactKey("host", tiny_model.name, Variant.FP32), root)
    records = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    assert len(records) >= TRIALS
    run_secs = [r[1][1] for r in records if r[1][1] and r[1][1][0] < 1e9]
    assert run_secs and all(0 < s[0] < 1 for s in run_secs)
    check_target(folder, host_device.target, "host")  # does not raise


def test_artifact_is_verified_hashed_and_complete(tuned, tiny_model):
    _, out, result, _ = tuned
    manifest = read_manifest(out)
    assert manifest == result.manifest
    assert check_hashes(out, manifest) == []
    assert manifest.model.sha256 == tiny_model.sha256
    assert manifest.tuning.trials >= TRIALS and manifest.tuning.tuned_kernels >= 1
    check = manifest.verification
    assert check.board == "host-1" and not check.emulated  # the embedded farm's board
    assert check.max_abs_error < 1e-4 and check.top1_matches_framework
    assert 0 < check.latency_ms_median < 50
    # Timed with as many TVM threads as the class has cores (TVM's own default on x86 is half
    # the logical CPUs), and the manifest says how many.
    assert check.threads == os.cpu_count()
    # The latency is the quietest block's, and the manifest says how it was taken.
    assert f"blocks of 10 runs, back to back in one process after 10 warm-up runs, " \
        f"{os.cpu_count()} threads" in check.measurement, check.measurement
    medians = [float(m) for m in check.measurement.split("block medians ")[1][:-4].split("/")]
    assert len(medians) in (3, 6)
    assert check.latency_ms_median == pytest.approx(min(medians), abs=0.006)
    assert check.latency_ms_median <= check.latency_ms_p90
    folder = log_dir(ArtifactKey("host", tiny_model.name, Variant.FP32), tuned[0])
    assert (out / "tuning_logs" / RECORDS).read_bytes() == (folder / RECORDS).read_bytes()
    assert manifest.toolchain["apache-tvm"].startswith("0.27")


def test_rerun_with_met_budget_tunes_nothing(tuned, host_device, tiny_model, host_farm, caplog):
    root = tuned[0]
    folder = log_dir(ArtifactKey("host", tiny_model.name, Variant.FP32), root)
    before = (folder / RECORDS).read_bytes()
    lowered = lower(import_model(tiny_model).mod, host_device.tvm_target())
    caplog.set_level(logging.INFO, logger="pipeline")
    result = tune(lowered, host_device, folder, TRIALS, host_farm)
    assert result.trials_before == result.trials_after >= TRIALS
    assert (folder / RECORDS).read_bytes() == before
    assert "budget met" in caplog.text


def test_rebuild_is_byte_identical(tuned):
    out = tuned[1]
    report = rebuild(out)
    assert report.identical, report
    assert report.rebuilt_sha256 == read_manifest(out).files[LIB_NAME]


def test_rebuild_names_a_tampered_tuning_log(tuned, tmp_path):
    import shutil

    out = tuned[1]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    records = copy / "tuning_logs" / RECORDS
    records.write_text(records.read_text().replace("0.", "1.", 1))
    with pytest.raises(UserError, match="tuning_logs/database_tuning_record.json"):
        rebuild(copy)


def test_logs_for_another_target_are_refused(tuned, tiny_model):
    from pipeline.base.devices import load_device

    root = tuned[0]
    folder = log_dir(ArtifactKey("host", tiny_model.name, Variant.FP32), root)
    nuc = load_device("x86-nuc")
    with pytest.raises(UserError, match="tuned for another target"):
        check_target(folder, nuc.target, "x86-nuc")


def test_truncated_last_record_is_moved_aside_and_the_rest_loads(tuned, tmp_path):
    import shutil

    root = tuned[0]
    folder = tmp_path / "logs"
    shutil.copytree(next(root.glob("host/*")), folder)
    lines = (folder / RECORDS).read_text().splitlines()
    (folder / RECORDS).write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    report = repair(folder)
    assert len(report.dropped) == 1 and f"{RECORDS}:{len(lines) + 1}" in report.dropped[0]
    assert count_records(folder) == len(lines)
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS),
                                        path_tuning_record=str(folder / RECORDS))
    assert len(database) == len(lines)


def test_library_runs_locally_like_on_the_board(tuned, tiny_model):
    import tvm
    from tvm import relax

    _, out, result, _ = tuned
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / LIB_NAME)), tvm.cpu())
    x = tiny_model.sample_input()
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, tiny_model.reference_output(x), atol=1e-4)


def test_rebuild_names_changed_model_weights(host_device, host_farm, tmp_path):
    import torch

    from pipeline.frontend.models import load_model

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    result = run_job(JobSpec(host_device, load_model(str(path)), 0, host_farm, tmp_path / "art",
                     tmp_path / "logs"))
    assert rebuild(result.artifact).identical

    with torch.no_grad():
        net[0].weight.mul_(1.01)  # the model file changes under the artifact
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    report = rebuild(result.artifact)
    assert not report.identical
    assert len(report.differences) == 1 and "weights or file changed" in report.differences[0]


def _copy_logs(tuned, tmp_path):
    import shutil

    folder = tmp_path / "logs"
    shutil.copytree(next(tuned[0].glob("host/*")), folder)
    return folder


def test_a_torn_workload_line_renumbers_nothing(tuned, tmp_path):
    """Records point to workloads by line number: a damaged workload in the middle keeps its
    place (a placeholder), the records that point to it are set aside, every other record still
    points to its own workload, and the next workload MetaSchedule appends lands on the next
    line (its index is the number of distinct workloads it loaded)."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    folder = _copy_logs(tuned, tmp_path)
    workloads = (folder / WORKLOADS).read_text().splitlines()
    records = (folder / RECORDS).read_text().splitlines()
    victim = len(workloads) // 2
    extra = json.loads(records[0])
    extra[0] = victim  # a record of the workload about to be damaged
    (folder / RECORDS).write_text("\n".join([*records, json.dumps(extra)]) + "\n")
    torn = workloads[:]
    torn[victim] = torn[victim][: len(torn[victim]) // 3]
    (folder / WORKLOADS).write_text("\n".join(torn) + "\n")

    kept = [line for line in records if json.loads(line)[0] != victim]
    report = repair(folder)
    # The placeholder, then each record of the damaged workload (its own and the extra one).
    assert len(report.dropped) == 1 + len(records) - len(kept) + 1, report.dropped
    assert f"{WORKLOADS}:{victim + 1}" in report.dropped[0]
    assert "replaced by a placeholder" in report.dropped[0]
    assert all(f"points to workload {victim}, which was damaged" in line
               for line in report.dropped[1:])
    repaired = (folder / WORKLOADS).read_text().splitlines()
    assert len(repaired) == len(workloads)
    assert [w for i, w in enumerate(repaired) if i != victim] == \
        [w for i, w in enumerate(workloads) if i != victim]
    assert (folder / RECORDS).read_text().splitlines() == kept

    database = open_database(folder)
    assert len(database) == len(kept)
    out = te.compute((1,), lambda _: tvm.tirx.const(-1, "int32"), name="fresh")
    fresh = tvm.IRModule({"main": te.create_prim_func([out])})
    database.commit_tuning_record(ms.database.TuningRecord(
        tvm.s_tir.Schedule(fresh).trace, database.commit_workload(fresh), [1e-3],
        tvm.target.Target("llvm")))
    assert len((folder / WORKLOADS).read_text().splitlines()) == len(workloads) + 1
    assert json.loads((folder / RECORDS).read_text().splitlines()[-1])[0] == len(workloads)


@pytest.mark.parametrize("bad_line, why", [
    (b"[]", "not a tuning record"),
    (b'{"a": 1}', "not a tuning record"),
    (b'[99, [[], [0.001], {"kind": "llvm"}, []]]', "points to workload 99"),
    (b"\xff\xfe not text", "not UTF-8"),
])
def test_malformed_record_lines_are_set_aside_by_name(tuned, tmp_path, bad_line, why):
    folder = _copy_logs(tuned, tmp_path)
    good = (folder / RECORDS).read_bytes()
    (folder / RECORDS).write_bytes(good + bad_line + b"\n")
    report = repair(folder)
    assert len(report.dropped) == 1 and why in report.dropped[0], report.dropped
    assert (folder / RECORDS).read_bytes() == good
    assert bad_line in (folder / (RECORDS + ".rejected")).read_bytes()
    assert len(open_database(folder)) == count_records(folder)


def test_a_last_line_without_its_newline_gets_one(tuned, tmp_path):
    """Otherwise the next append would glue two records into one unreadable line."""
    folder = _copy_logs(tuned, tmp_path)
    good = (folder / RECORDS).read_bytes()
    (folder / RECORDS).write_bytes(good.rstrip(b"\n"))
    assert repair(folder).dropped == ()
    assert (folder / RECORDS).read_bytes() == good
