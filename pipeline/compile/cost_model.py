"""A MetaSchedule XGBoost cost model trained on every committed tuning record of a device class,
shipped beside the class's logs in tuning_logs/<class>/cost_model/, so that the search for a
model nobody has tuned ranks its candidates from the first batch, instead of picking the first
hundred at random while a fresh model has too little data to predict.

The same logs give the same file on every machine: records are read in a fixed order, the
booster trains with a fixed thread count and seed, and the tar has no times or owners in it.
`trained_on.json` names the logs (file hashes) it was trained from: the nightly job retrains a
model whose logs changed."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.tuning_logs import RECORDS, file_hashes, logged_target, open_database
from pipeline.base.errors import UserError
from pipeline.base.files import atomic_write
from pipeline.compile.extensions import extensions_for, tune_context

log = logging.getLogger(__name__)

FOLDER = "cost_model"
MODEL_FILE = "model.tar.gz"  # XGBModel.save's layout (model.bin + data.npy), for XGBModel.load
TRAINED_ON = "trained_on.json"
FORMAT_VERSION = 1
TRAINING_THREADS = 2  # fixed, not this machine's count: the same logs give the same booster
# MetaSchedule's XGBModel predicts at random until it holds this many measured candidates.
MIN_RECORDS = 100


@dataclass(frozen=True)
class TrainedCostModel:
    path: Path  # the model file, for XGBModel.load
    records: int
    workloads: int
    logs: dict[str, dict[str, str]]  # log folder name -> its file hashes at training time

    def __str__(self) -> str:
        return (f"{self.path} (trained on {self.records} records of {self.workloads} kernels "
                f"in {', '.join(sorted(self.logs))})")


def shipped(class_dir: Path) -> TrainedCostModel | None:
    """The cost model committed beside a class's logs, or None."""
    folder = class_dir / FOLDER
    try:
        meta = json.loads((folder / TRAINED_ON).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != FORMAT_VERSION or not (folder / MODEL_FILE).is_file():
        return None
    return TrainedCostModel(folder / MODEL_FILE, int(meta["records"]), int(meta["workloads"]),
                            meta["logs"])


def class_logs(class_dir: Path) -> list[Path]:
    """The class's log folders that hold records, in a fixed order."""
    if not class_dir.is_dir():
        return []
    return sorted(p for p in class_dir.iterdir()
                  if p.is_dir() and p.name != FOLDER and (p / RECORDS).is_file()
                  and (p / RECORDS).stat().st_size > 0)


def is_current(model: TrainedCostModel, class_dir: Path) -> bool:
    """Whether the class's logs are those the model was trained on."""
    return model.logs == {folder.name: file_hashes(folder) for folder in class_logs(class_dir)}


def train(class_dir: Path) -> TrainedCostModel:
    """Train on every record in the class's logs and write the model beside them (atomically:
    a crash leaves the previous model)."""
    # Each folder's records name the tensor intrinsics of the target they were tuned for.
    targets = {f: t for f in class_logs(class_dir) if (t := logged_target(f)) is not None}
    if not targets:
        raise UserError(f"No tuning records under {class_dir} to train a cost model on: tune a "
                        f"model for the class first (python -m pipeline.tune --device "
                        f"{class_dir.name} --model efficientnet-lite0).")
    import tvm

    groups, records = OrderedDict(), 0
    hashes = {folder.name: file_hashes(folder) for folder in targets}
    for folder, logged in targets.items():
        target = tvm.target.Target(logged)
        extensions_for(target).register_intrinsics()
        count = _featurize(folder, target, groups)
        log.info("cost model: %d records of %s featurized", count, folder)
        records += count
    if records < MIN_RECORDS:
        raise UserError(f"Only {records} tuning records under {class_dir}: a cost model needs "
                        f"{MIN_RECORDS} before it predicts anything. Tune longer first.")
    model = _xgb_model()
    model.data, model.data_size = groups, records
    features, ratios = _training_set(groups)
    model._train(xs=features, ys=ratios)  # what XGBModel.update does after adding the data
    folder = class_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MODEL_FILE, _deterministic_tar(model))
    meta = {"version": FORMAT_VERSION, "records": records, "workloads": len(groups),
            "logs": hashes, "training_threads": TRAINING_THREADS,
            "xgboost": _xgboost_version()}
    atomic_write(folder / TRAINED_ON, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return TrainedCostModel(folder / MODEL_FILE, records, len(groups), hashes)


def for_tuning(model: TrainedCostModel):
    """A MetaSchedule cost model starting from `model`: it predicts from the first batch, and
    retrains on the committed data plus this run's after every batch. (MetaSchedule's adaptive
    training would wait for 20% more data, thousands of trials here: the run's own kernels
    would never teach it anything. A retraining on ~6,000 samples takes seconds.)"""
    import warnings

    xgb_model = _xgb_model(threads=None)
    xgb_model.adaptive_training = False
    with warnings.catch_warnings():  # XGBModel.load names the booster file model.bin (UBJSON)
        warnings.filterwarnings("ignore", message=".*Unknown file format")
        xgb_model.load(str(model.path))
    return xgb_model


def _xgb_model(threads: int | None = TRAINING_THREADS):
    from tvm.s_tir.meta_schedule.cost_model import XGBModel

    return XGBModel(num_tuning_cores=threads or os.cpu_count(), verbose_eval=0)


def _featurize(folder: Path, target, groups: OrderedDict) -> int:
    """Add the features and mean run times of the folder's records to `groups`, keyed as
    XGBModel keys them (the structural hash of the kernel), in the records' order."""
    import numpy as np
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import FeatureGroup
    from tvm.s_tir.meta_schedule.utils import shash2hex

    database = open_database(folder)
    by_workload: OrderedDict = OrderedDict()
    for record in database.get_all_tuning_records():
        by_workload.setdefault(shash2hex(record.workload.mod), (record.workload, []))[1] \
            .append(record)
    extractor = ms.feature_extractor.PerStoreFeature()
    count = 0
    for group_hash, (workload, found) in by_workload.items():
        context = tune_context(mod=workload.mod, target=target, num_threads=1)
        candidates, costs = [], []
        for record in found:
            try:
                candidates.append(record.as_measure_candidate())
            except Exception:  # noqa: BLE001 - a trace that no longer replays teaches nothing
                continue
            secs = [float(s) for s in record.run_secs]
            costs.append(float(np.median(secs)) if secs else 1e10)
        features = [f.numpy().astype("float32")
                    for f in extractor.extract_from(context, candidates)]
        kept = [(f, c) for f, c in zip(features, costs, strict=True) if len(f)]
        if not kept:
            continue
        new_features = [f for f, _ in kept]
        new_costs = np.array([c for _, c in kept], dtype="float32")
        if group_hash in groups:
            groups[group_hash].append(new_features, new_costs)
        else:
            groups[group_hash] = FeatureGroup(group_hash, new_features, new_costs)
        count += len(kept)
    return count


def _training_set(groups: OrderedDict):
    """Features and each candidate's speed relative to its kernel's fastest, as XGBModel
    trains on."""
    import itertools

    import numpy as np

    features = list(itertools.chain.from_iterable(g.features for g in groups.values()))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.concatenate([np.divide(g.min_cost, g.costs, out=np.zeros_like(g.costs),
                                           where=g.costs != 0) for g in groups.values()])
    return features, ratios


def _deterministic_tar(model) -> bytes:
    """XGBModel.save's tar, without the times and owners that make two saves differ, gzipped
    (XGBModel.load's `tar -xf` reads it; the features are mostly zeros)."""
    import gzip

    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        booster_path = Path(scratch) / "model.ubj"
        model.booster.save_model(str(booster_path))
        data = io.BytesIO()
        np.save(data, np.array([(g.group_hash, g.features, g.costs)
                                for g in model.data.values()], dtype=object))
        members = {"model.bin": booster_path.read_bytes(), "data.npy": data.getvalue()}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(out.getvalue(), compresslevel=9, mtime=0)


def _xgboost_version() -> str:
    import xgboost

    return xgboost.__version__
