"""`python -m pipeline.nightly`: rebuild every deployable artifact from the committed logs.

For each entry of the matrix (models x device classes x precisions): build with no tuning,
verify on a board of the class when the farm has one (else say why not), compare the library
byte for byte with the released artifact (and name the input that differs), and compare latency
and accuracy with the previous night. Writes report.json and report.html (plots: latency over
nights, tuning curves) and exits 1 on a reproducibility break, a regression or a failed entry.
One failing entry does not stop the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from pipeline import logs
from pipeline.artifact import ARTIFACT_ROOT, LIB_NAME, LOGS_DIRNAME, read_manifest, unpack
from pipeline.errors import EXIT_USER_ERROR, UserError
from rpc.tracker import TrackerAddress, parse_address, registered_boards

MATRIX = Path(__file__).resolve().parent / "nightly.yaml"
NIGHTLY_ROOT = Path("build") / "nightly"
REPORT_SCHEMA = "edge-tvm-pipeline/nightly-report"
REPORT_VERSION = 1
Variant = Literal["fp32", "int8", "fp16"]  # quantized with the default options (builtin data)


@dataclass(frozen=True)
class Entry:
    model: str
    device: str
    variant: str = "fp32"

    @property
    def id(self) -> str:
        return f"{self.device}/{self.model}-{self.variant}"


@dataclass(frozen=True)
class Matrix:
    entries: tuple[Entry, ...]
    regression_threshold: float = 0.10  # allowed relative latency increase over last night


@dataclass
class EntryResult:
    id: str
    status: str = "ok"  # ok | problem | error
    problems: list[str] = field(default_factory=list)
    lib_sha256: str | None = None
    reproducible: bool | None = None  # None: no released artifact to compare with
    release_note: str = ""
    board: str | None = None  # None: not verified (see verify_note)
    verify_note: str = ""
    emulated: bool = False
    latency_ms: float | None = None
    previous_latency_ms: float | None = None
    max_abs_error: float | None = None
    top1_matches: bool | None = None
    trials: int = 0
    tuning_curve_ms: list[float] = field(default_factory=list)
    error: str | None = None


def load_matrix(path: Path) -> Matrix:
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"Cannot read the nightly matrix {path} ({err}).") from None
    if not isinstance(raw, dict) or set(raw) - {"entries", "regression_threshold"}:
        raise UserError(f"{where}: expected keys 'entries' and optionally "
                        f"'regression_threshold'.")
    entries = []
    for i, item in enumerate(raw.get("entries") or []):
        if not isinstance(item, dict) or set(item) - {"model", "device", "variant"} or \
                not {"model", "device"} <= set(item):
            raise UserError(f"{where}: entries[{i}] must have model, device and optionally "
                            f"variant, nothing else.")
        entry = Entry(str(item["model"]), str(item["device"]), str(item.get("variant", "fp32")))
        if entry.variant not in get_args(Variant):
            raise UserError(f"{where}: entries[{i}].variant '{entry.variant}' is not supported "
                            f"yet (supported: {', '.join(get_args(Variant))}).")
        entries.append(entry)
    if not entries:
        raise UserError(f"{where}: 'entries' is empty.")
    threshold = raw.get("regression_threshold", 0.10)
    if not isinstance(threshold, (int, float)) or threshold < 0:
        raise UserError(f"{where}: regression_threshold must be a number >= 0, e.g. 0.1.")
    return Matrix(tuple(entries), float(threshold))


def run_nightly(matrix: Matrix, tracker: TrackerAddress | None, releases: Path, history: Path,
                out_dir: Path, log_root: Path = logs.LOG_ROOT, out=None) -> dict[str, Any]:
    out = out or sys.stderr
    earlier = _history_reports(history)
    previous = earlier[-1] if earlier else None
    results = []
    for entry in matrix.entries:
        print(f"== {entry.id}", file=out, flush=True)
        result = EntryResult(entry.id)
        try:
            _run_entry(entry, result, tracker, releases, out_dir, log_root, out)
            _compare_with_previous(result, previous, matrix.regression_threshold)
        except Exception as err:  # noqa: BLE001 - one failing entry must not stop the others
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            print(f"   error: {result.error}", file=out)
            traceback.print_exc(file=out)
        if result.problems and result.status == "ok":
            result.status = "problem"
        results.append(result)
        print(f"   {result.status}" + "".join(f"; {p}" for p in result.problems), file=out)
    failed = any(r.status != "ok" for r in results)
    report = {"schema": REPORT_SCHEMA, "schema_version": REPORT_VERSION,
              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "regression_threshold": matrix.regression_threshold,
              "tracker": str(tracker) if tracker else None,
              "entries": [asdict(r) for r in results], "exit_code": 1 if failed else 0}
    from pipeline.report import write_report

    write_report(report, earlier, out_dir)
    stamp = report["started"].replace(":", "").replace("+0000", "Z")
    stamp = f"{stamp}-{len(earlier):04d}"  # two runs in one second
    history.mkdir(parents=True, exist_ok=True)
    logs.atomic_write(history / f"{stamp}.json", json.dumps(report, indent=2) + "\n")
    return report


def _run_entry(entry: Entry, result: EntryResult, tracker: TrackerAddress | None,
               releases: Path, out_dir: Path, log_root: Path, out) -> None:
    from pipeline.devices import load_device
    from pipeline.flow import run_job
    from pipeline.models import load_model
    from pipeline.quantize import QuantizeOptions
    from rpc.local import local_farm

    model = load_model(entry.model)
    device = logs.buildable_device(load_device(entry.device),
                                   logs.log_dir(entry.device, model.name, entry.variant, log_root))
    dest = out_dir / "artifacts" / entry.device / f"{entry.model}-{entry.variant}"
    with contextlib.ExitStack() as stack:
        if tracker is None:
            address = stack.enter_context(local_farm(device, out=out)).address
            verify, note = True, ""
        else:
            address = tracker
            verify = registered_boards(tracker, device.rpc_key) > 0
            note = "" if verify else (f"skipped: no '{device.rpc_key}' board registered at the "
                                      f"tracker {tracker}")
        options = QuantizeOptions(mode="none" if entry.variant == "fp32" else entry.variant)
        job = run_job(device, model, 0, address, dest, log_root, out=out, verify=verify,
                      options=options)
    manifest = job.manifest
    result.lib_sha256 = manifest.files[LIB_NAME]
    result.trials = manifest.tuning.trials
    result.tuning_curve_ms = tuning_curve_ms(dest / LOGS_DIRNAME / logs.RECORDS)
    check = manifest.verification
    result.verify_note = note
    if check is not None:
        result.board, result.emulated = check.board, check.emulated
        result.max_abs_error = check.max_abs_error
        result.top1_matches = check.top1_matches_framework
        result.latency_ms = check.latency_ms_median
        result.verify_note = ("emulated board: outputs checked, not benchmarked" if check.emulated
                              else "outputs checked and benchmarked")
    _compare_with_release(result, entry, releases, device, model, manifest)


def _compare_with_release(result: EntryResult, entry: Entry, releases: Path, device, model,
                          manifest) -> None:
    from pipeline.flow import toolchain_versions
    from pipeline.rebuild import input_differences

    folder = releases / entry.device / f"{entry.model}-{entry.variant}"
    tarball = folder.with_name(folder.name + ".tar.gz")
    if not folder.exists() and tarball.exists():
        folder = _unpacked_release(tarball)
    if not (folder / "manifest.json").exists():
        result.release_note = f"no released artifact at {folder}: nothing to compare with"
        return
    released = read_manifest(folder)
    result.reproducible = released.files.get(LIB_NAME) == result.lib_sha256
    if result.reproducible:
        result.release_note = f"byte-identical to {folder}"
        return
    causes = input_differences(released, device, model, toolchain_versions(device))
    if released.tuning.log_sha256 != manifest.tuning.log_sha256:
        causes.append("tuning logs differ from the released artifact's")
    result.release_note = f"differs from {folder}: " + (
        "; ".join(causes) if causes else "no recorded input differs (a non-deterministic build?)")
    result.problems.append("reproducibility break: " + result.release_note)


def _unpacked_release(tarball: Path) -> Path:
    """Unpack a released tarball (safely, hashes checked) next to it, once."""
    dest = tarball.with_name(tarball.name.removesuffix(".tar.gz") + ".unpacked")
    if not dest.exists():
        unpack(tarball, dest)
    return dest


def _compare_with_previous(result: EntryResult, previous: dict | None, threshold: float) -> None:
    if previous is None:
        return
    before = next((e for e in previous.get("entries", []) if e.get("id") == result.id), None)
    if before is None:
        return
    result.previous_latency_ms = before.get("latency_ms")
    if result.latency_ms is not None and result.previous_latency_ms:
        ratio = result.latency_ms / result.previous_latency_ms
        if ratio > 1 + threshold:
            result.problems.append(
                f"latency regression: {result.latency_ms:.3f} ms vs "
                f"{result.previous_latency_ms:.3f} ms last night (+{(ratio - 1) * 100:.0f}%, "
                f"threshold +{threshold * 100:.0f}%)")
    if before.get("top1_matches") and result.top1_matches is False:
        result.problems.append("accuracy regression: top-1 no longer matches the framework")


def tuning_curve_ms(records: Path) -> list[float]:
    """After each record: the sum over kernels of the best time measured so far (ms).
    Unweighted (a kernel called twice counts once): it shows progress, not model latency."""
    best: dict[int, float] = {}
    curve = []
    if not records.exists():
        return curve
    for line in records.read_text().splitlines():
        try:
            workload, (_, run_secs, *_rest) = json.loads(line)
        except (ValueError, TypeError):
            continue
        if run_secs:
            seconds = sum(float(s) for s in run_secs) / len(run_secs)
            if seconds < 1e9:
                best[workload] = min(best.get(workload, seconds), seconds)
        if best:
            curve.append(sum(best.values()) * 1e3)
    return curve


def _history_reports(history: Path) -> list[dict]:
    reports = []
    for path in sorted(history.glob("*.json")) if history.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(path.read_text())
            if raw.get("schema") == REPORT_SCHEMA:
                reports.append(raw)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.nightly",
        description="Rebuild every artifact of the matrix from the committed tuning logs, check "
                    "byte-identity with the released artifacts, verify on boards, compare with "
                    "the previous night, and write report.json + report.html.",
        epilog="Exit status: 0 all good; 1 a reproducibility break, a regression above the "
               "threshold, or a failed entry (the others still run); 2 bad input.")
    parser.add_argument("--matrix", type=Path, default=MATRIX,
                        help=f"matrix YAML (default: {MATRIX.relative_to(MATRIX.parents[1])})")
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="farm to verify on; classes it has no board for are built but not "
                             "verified (default: an embedded board per class)")
    parser.add_argument("--releases", type=Path, default=ARTIFACT_ROOT,
                        help="released artifacts, <device>/<model>-<variant>[.tar.gz] "
                             "(default: artifacts/)")
    parser.add_argument("--history", type=Path, default=NIGHTLY_ROOT / "history",
                        help="earlier nights' reports (default: build/nightly/history)")
    parser.add_argument("--out", type=Path, default=NIGHTLY_ROOT / "latest",
                        help="tonight's artifacts and report (default: build/nightly/latest)")
    parser.add_argument("--logs", type=Path, default=logs.LOG_ROOT,
                        help="tuning log root (default: tuning_logs/)")
    parser.add_argument("--threshold", type=float,
                        help="allowed relative latency increase (overrides the matrix's)")
    args = parser.parse_args(argv)
    try:
        matrix = load_matrix(args.matrix)
        if args.threshold is not None:
            matrix = Matrix(matrix.entries, args.threshold)
        tracker = parse_address(args.tracker) if args.tracker else None
        report = run_nightly(matrix, tracker, args.releases, args.history, args.out, args.logs)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    for entry in report["entries"]:
        print(f"{entry['id']}: {entry['status']}" + "".join(f"; {p}" for p in entry["problems"])
              + (f"; {entry['error']}" if entry["error"] else ""))
    print(f"report: {args.out / 'report.html'}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
