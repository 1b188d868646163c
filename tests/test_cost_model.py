"""The cost model trained on a class's committed records: the same logs give the same file, it
ranks the candidates of a kernel it never saw far better than chance (a fresh model ranks its
first hundred at random), and a tuning job finds it beside the logs it borrows."""

import json

import numpy as np
import pytest

from pipeline.artifact.tuning_logs import RECORDS, WORKLOADS
from pipeline.base.devices import load_device
from pipeline.base.errors import UserError
from pipeline.base.paths import TUNING_LOGS
from pipeline.base.variant import ArtifactKey, Variant
from pipeline.compile import cost_model

SOURCE = TUNING_LOGS / "x86-nuc" / "efficientnet-lite0-fp32"  # AVX2: every x86 CI machine
HELD_OUT = 6  # kernels, spread over the model; the model is trained on the others' records


def _write_logs(folder, lines):
    folder.mkdir(parents=True)
    (folder / WORKLOADS).write_text((SOURCE / WORKLOADS).read_text())
    (folder / RECORDS).write_text("".join(line + "\n" for line in lines))


def _split(tmp_path):
    """A class folder with the committed records of all kernels but HELD_OUT of them, and
    those kernels' records apart."""
    lines = [line for line in (SOURCE / RECORDS).read_text().splitlines() if line.strip()]
    by_workload: dict[int, list[str]] = {}
    for line in lines:
        by_workload.setdefault(json.loads(line)[0], []).append(line)
    by_count = sorted(by_workload, key=lambda w: (-len(by_workload[w]), w))
    held_out = set(by_count[1::len(by_count) // HELD_OUT][:HELD_OUT])
    class_dir = tmp_path / "x86-nuc"
    _write_logs(class_dir / SOURCE.name,
                [line for line in lines if json.loads(line)[0] not in held_out])
    _write_logs(tmp_path / "held-out", [line for w in sorted(held_out) for line in by_workload[w]])
    return class_dir, tmp_path / "held-out"


@pytest.mark.slow
def test_trained_cost_model_ranks_kernels_it_never_saw(tmp_path):
    import tvm
    from scipy.stats import spearmanr
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from pipeline.artifact.tuning_logs import open_database, ran
    from pipeline.compile.extensions import tune_context

    class_dir, held = _split(tmp_path)
    model = cost_model.train(class_dir)
    assert model.records > 1000 and model.workloads > 20
    assert cost_model.is_current(cost_model.shipped(class_dir), class_dir)
    predictor = cost_model.for_tuning(model)
    by_kernel: dict[str, list] = {}
    for record in open_database(held).get_all_tuning_records():
        if ran(record):
            by_kernel.setdefault(shash2hex(record.workload.mod), []).append(record)
    assert len(by_kernel) == HELD_OUT
    target = tvm.target.Target(load_device("x86-nuc").target)
    rhos = []
    for records in by_kernel.values():
        context = tune_context(mod=records[0].workload.mod, target=target, num_threads=1)
        predicted = predictor.predict(context, [r.as_measure_candidate() for r in records])
        speed = [1 / np.mean([float(s) for s in r.run_secs]) for r in records]
        rhos.append(spearmanr(predicted, speed).statistic)
    print("rank correlation on kernels it never saw: " + ", ".join(f"{r:.2f}" for r in rhos))
    # A fresh model ranks at random (0 on average): this one orders every unseen kernel's
    # candidates the right way round, most of them well.
    assert min(rhos) > 0 and np.mean(rhos) > 0.3

    # A record more and the model is stale: the nightly job retrains it.
    with (class_dir / SOURCE.name / RECORDS).open("a") as f:
        f.write((held / RECORDS).read_text().splitlines()[0] + "\n")
    assert not cost_model.is_current(cost_model.shipped(class_dir), class_dir)


def test_the_same_records_train_the_same_file(tmp_path):
    lines = (SOURCE / RECORDS).read_text().splitlines()[:cost_model.MIN_RECORDS + 20]
    files = []
    for name in ("a", "b"):
        _write_logs(tmp_path / name / "x86-nuc" / SOURCE.name, lines)
        files.append(cost_model.train(tmp_path / name / "x86-nuc").path.read_bytes())
    assert files[0] == files[1] and len(files[0]) > 10_000
    _write_logs(tmp_path / "few" / "x86-nuc" / SOURCE.name, lines[:cost_model.MIN_RECORDS - 1])
    with pytest.raises(UserError, match="needs 100"):
        cost_model.train(tmp_path / "few" / "x86-nuc")


def test_a_detected_host_tunes_with_the_cost_model_of_the_class_it_borrows(tmp_path):
    from pipeline.job.build_job import _also_borrowed, _cost_model_for, logs_for

    host = load_device("host")
    folder = logs_for(host, ArtifactKey("host", "resnet-18", Variant.FP32), tmp_path).folder
    assert _cost_model_for(host, folder, tmp_path) is None  # nothing shipped: a fresh model
    shipped_dir = tmp_path / _also_borrowed(host)[-1] / cost_model.FOLDER  # x86-nuc: any x86
    shipped_dir.mkdir(parents=True)
    (shipped_dir / cost_model.MODEL_FILE).write_bytes(b"")
    (shipped_dir / cost_model.TRAINED_ON).write_text(json.dumps(
        {"version": cost_model.FORMAT_VERSION, "records": 5, "workloads": 1, "logs": {}}))
    found = _cost_model_for(host, folder, tmp_path)
    assert found is not None and found.path == shipped_dir / cost_model.MODEL_FILE
