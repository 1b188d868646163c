"""The nightly job over a small matrix (host + an emulated arm-a53 board): reproducibility
against released artifacts (a folder and a tarball), a planted latency regression, a failing
entry that does not stop the others, and the HTML report opened in a real headless browser."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import nightly
from pipeline.artifact.store import pack
from pipeline.artifact.tuning_logs import RECORDS
from pipeline.base.devices import load_device
from pipeline.farm.modeled import label
from pipeline.job.nightly_job import tuning_curve_ms

REPO = Path(__file__).resolve().parent.parent


def _matrix(path, entries, threshold=5.0):
    path.write_text(yaml.safe_dump({"regression_threshold": threshold, "entries": entries}))
    return path


def _night(tmp_path, name, matrix, releases, history, logs_root):
    out = tmp_path / name
    code = nightly.main(["--matrix", str(matrix), "--releases", str(releases), "--history",
                         str(history), "--out", str(out), "--logs", str(logs_root)])
    report = json.loads((out / "report.json").read_text())
    return code, {e["id"]: e for e in report["entries"]}, out


@pytest.mark.slow
def test_nightly_reproducibility_regression_and_report(tmp_path):
    releases, history, logs_root = tmp_path / "releases", tmp_path / "history", tmp_path / "logs"
    logs_root.mkdir()
    both = _matrix(tmp_path / "m.yaml", [{"model": "tiny-cnn", "device": "host"},
                                          {"model": "tiny-cnn", "device": "arm-a53"}])

    code, entries, out1 = _night(tmp_path, "night1", both, releases, history, logs_root)
    assert code == 0
    host, arm = entries["host/tiny-cnn-fp32"], entries["arm-a53/tiny-cnn-fp32"]
    assert host["reproducible"] is None and "no released artifact" in host["release_note"]
    assert host["board"] == "host-1" and host["latency_ms"] > 0 and host["top1_matches"]
    # The embedded arm-a53 board is modeled: its latency is the model's, labelled so.
    assert arm["emulated"] and arm["timing"].startswith("modeled (Cortex-A53 model v")
    assert arm["latency_ms"] > 0 and arm["max_abs_error"] < 1e-4
    assert arm["verify_note"] == f"outputs checked; latency {label(load_device('arm-a53'))}"

    # Release night 1: host as a folder, arm-a53 as a tarball.
    shutil.copytree(out1 / "artifacts" / "host", releases / "host")
    pack(out1 / "artifacts" / "arm-a53" / "tiny-cnn-fp32",
         releases / "arm-a53" / "tiny-cnn-fp32.tar.gz")
    code, entries, _ = _night(tmp_path, "night2", both, releases, history, logs_root)
    assert code == 0
    assert all(e["reproducible"] for e in entries.values()), entries
    assert entries["host/tiny-cnn-fp32"]["previous_latency_ms"] == host["latency_ms"]

    # Plant a regression: last night was 100x faster. Add an entry that fails.
    newest = sorted(history.glob("*.json"))[-1]
    planted = json.loads(newest.read_text())
    for entry in planted["entries"]:
        if entry["id"] == "host/tiny-cnn-fp32":
            entry["latency_ms"] /= 100
    newest.write_text(json.dumps(planted))
    broken = _matrix(tmp_path / "m3.yaml", [{"model": "no-such-model", "device": "host"},
                                            {"model": "tiny-cnn", "device": "host"}])
    code, entries, out3 = _night(tmp_path, "night3", broken, releases, history, logs_root)
    assert code == 1
    assert entries["host/no-such-model-fp32"]["status"] == "error"
    assert "Unknown model" in entries["host/no-such-model-fp32"]["error"]
    host = entries["host/tiny-cnn-fp32"]  # ran although the entry before it failed
    assert host["status"] == "problem" and host["reproducible"]
    assert any(p.startswith("latency regression") for p in host["problems"])

    page = (out3 / "report.html").read_text()
    assert page.count("<svg") == 2 and "latency regression" in page
    _screenshot(out3 / "report.html")


def _screenshot(page: Path) -> None:
    """Open the page in Debian's chromium, headless, and keep the screenshot."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: apt-get install chromium (.ci/run does)"
    shot = REPO / "build" / "test-output" / "nightly-report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--screenshot={shot}", "--window-size=1300,1300",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    print(f"screenshot of the nightly report: {shot}")


def test_tuning_curve_is_the_running_sum_of_best_kernel_times(tmp_path):
    records = tmp_path / RECORDS
    lines = [[0, [[], [0.004], None, None]], [1, [[], [0.002], None, None]],
             [0, [[], [0.001], None, None]], [1, [[], [1e10], None, None]]]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines) + '[1, [[], [0.00')
    assert tuning_curve_ms(tmp_path) == pytest.approx([4.0, 6.0, 3.0, 3.0])


@pytest.mark.parametrize("entries, message", [
    ([{"model": "tiny-cnn", "device": "host", "variant": "int4"}], "int4. is not one of"),
    ([{"model": "tiny-cnn"}], "must have model, device"),
    ([], "empty"),
])
def test_matrix_mistakes_are_named(tmp_path, entries, message):
    from pipeline.base.errors import UserError

    with pytest.raises(UserError, match=message):
        nightly.load_matrix(_matrix(tmp_path / "m.yaml", entries))


def test_a_modeled_latency_is_never_compared_with_a_measured_one():
    from pipeline.job.nightly_job import _compare_with_previous
    from pipeline.job.report import EntryResult, NightlyReport

    def night(timing, latency):
        return NightlyReport("2026-11-30T00:00:00", 0.1, None,
                             (EntryResult("arm-a53/m-fp32", timing=timing, latency_ms=latency),), 0)

    modeled = "modeled (Cortex-A53 model v1)"
    for before, now in [("measured", modeled), (modeled, "modeled (Cortex-A53 model v2)"),
                        (None, modeled)]:
        result = EntryResult("arm-a53/m-fp32", timing=now, latency_ms=50.0)
        _compare_with_previous(result, night(before, 10.0), 0.1)
        assert result.previous_latency_ms is None and not result.problems
    result = EntryResult("arm-a53/m-fp32", timing=modeled, latency_ms=50.0)
    _compare_with_previous(result, night(modeled, 10.0), 0.1)
    assert result.previous_latency_ms == 10.0 and "latency regression" in result.problems[0]


def _tuning_minutes_run(onnxruntime_ms=18.0):
    return {"schema": "edge-tvm-pipeline/tuning-minutes", "schema_version": 1,
            "model": "resnet-18", "device": "host", "minutes": 30.0,
            "started": "2026-12-04T21:06:44+00:00", "machine": "AMD EPYC (znver4), 2 cores",
            "command": "python3 bench/tuning_curve.py --minutes 30 --json r.json",
            "onnxruntime_ms": onnxruntime_ms,
            "modes": {"cold": {"curve": [], "built_ms": 2100.5},
                      "trained": {"curve": [[4.5, 20.5], [6.0, 19.0], [12.0, 19.5]],
                                  "built_ms": 19.25}}}


def test_the_matrix_names_tuning_minutes_runs_and_the_report_plots_them(tmp_path):
    from pipeline.base.errors import UserError
    from pipeline.job.report import NightlyReport, render_html

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text(json.dumps(_tuning_minutes_run()))
    matrix_file = tmp_path / "m.yaml"
    entries = [{"model": "tiny-cnn", "device": "host"}]
    matrix_file.write_text(yaml.safe_dump({"entries": entries,
                                           "tuning_minutes": ["results/run.json"]}))
    (run,) = nightly.load_matrix(matrix_file).tuning_minutes
    assert [m.mode for m in run.modes] == ["cold", "trained"]
    assert run.modes[1].curve == ((4.5, 20.5), (6.0, 19.0), (12.0, 19.5))

    report = NightlyReport("2026-12-05T00:00:00", 0.1, None, (), 0, (run,))
    assert NightlyReport.from_dict(json.loads(report.to_json())) == report  # the history reads it
    page = render_html(report, [])
    assert page.count("<svg") == 3 and "resnet-18 on host" in page
    # matplotlib writes each text it draws as a comment beside its glyph paths
    for text in ["trained: built 19.25 ms", "cold: built 2100.50 ms", "ONNX Runtime 18.00 ms",
                 "trained (estimate)", "minutes of pipeline.tune"]:
        assert text in page, text
    assert "cold (estimate)" not in page  # a mode with no estimate draws only its built level

    for name, content, message in [("none.json", None, "none.json, which cannot be read"),
                                   ("bad.json", {"model": "m"}, "not a file of bench/tuning_cur")]:
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content))
        matrix_file.write_text(yaml.safe_dump({"entries": entries, "tuning_minutes": [name]}))
        with pytest.raises(UserError, match=message):
            nightly.load_matrix(matrix_file)


def test_the_shipped_matrix_loads():
    matrix = nightly.load_matrix(REPO / "pipeline" / "nightly.yaml")
    assert matrix.entries and all(run.modes for run in matrix.tuning_minutes)
