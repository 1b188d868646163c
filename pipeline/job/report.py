"""The nightly report: its typed form (report.json, one per night in the history) and its
self-contained HTML page: a summary table, latency per device and model over the nights,
tuning curves, and the tuning-minutes curves of a model with no logs of its own (the runs of
bench/tuning_curve.py the matrix names); plots are inline SVG (no network, no extra files)."""

from __future__ import annotations

import dataclasses
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.base.files import atomic_write

REPORT_SCHEMA = "edge-tvm-pipeline/nightly-report"
REPORT_VERSION = 2  # 2: tuning_minutes; version 1 reports (the history) still read
TUNING_MINUTES_SCHEMA = "edge-tvm-pipeline/tuning-minutes"


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
    timing: str | None = None  # what latency_ms is: "measured" or a timing model's label
    latency_ms: float | None = None
    previous_latency_ms: float | None = None
    max_abs_error: float | None = None
    top1_matches: bool | None = None
    trials: int = 0
    tuning_curve_ms: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class ModeCurve:
    mode: str  # cold | transfer | trained
    curve: tuple[tuple[float, float], ...]  # (minutes, estimated model latency ms)
    built_ms: float  # the library built from the mode's logs, timed alone


@dataclass(frozen=True)
class TuningMinutes:
    """One run of bench/tuning_curve.py: a model with no logs of its own, tuned for the same
    minutes cold, with transfer, and with transfer + the class's trained cost model."""
    model: str
    device: str
    minutes: float
    machine: str
    started: str
    command: str
    onnxruntime_ms: float | None  # None: the run stopped before timing ONNX Runtime
    modes: tuple[ModeCurve, ...]

    @staticmethod
    def from_dict(raw: dict) -> TuningMinutes:
        if raw.get("schema") not in (None, TUNING_MINUTES_SCHEMA):
            raise ValueError(f"schema {raw.get('schema')!r} is not {TUNING_MINUTES_SCHEMA}")
        modes = raw["modes"]
        if isinstance(modes, dict):  # bench/tuning_curve.py's file: keyed by mode
            modes = [{"mode": name, **value} for name, value in modes.items()]
        return TuningMinutes(
            str(raw["model"]), str(raw["device"]), float(raw["minutes"]), str(raw["machine"]),
            str(raw["started"]), str(raw["command"]),
            None if raw["onnxruntime_ms"] is None else float(raw["onnxruntime_ms"]),
            tuple(ModeCurve(str(m["mode"]), tuple((float(t), float(ms)) for t, ms in m["curve"]),
                            float(m["built_ms"])) for m in modes))


@dataclass(frozen=True)
class NightlyReport:
    started: str  # ISO time, UTC
    regression_threshold: float
    tracker: str | None  # None: embedded boards
    entries: tuple[EntryResult, ...]
    exit_code: int
    tuning_minutes: tuple[TuningMinutes, ...] = ()
    schema: str = REPORT_SCHEMA
    schema_version: int = REPORT_VERSION

    def entry(self, entry_id: str) -> EntryResult | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_dict(raw: dict) -> NightlyReport:
        known = {f.name for f in dataclasses.fields(EntryResult)}
        entries = tuple(EntryResult(**{k: v for k, v in e.items() if k in known})
                        for e in raw["entries"])
        return NightlyReport(raw["started"], float(raw["regression_threshold"]), raw["tracker"],
                             entries, int(raw["exit_code"]),
                             tuple(TuningMinutes.from_dict(t)
                                   for t in raw.get("tuning_minutes", ())),
                             raw["schema"], int(raw["schema_version"]))




def write_report(report: NightlyReport, history: list[NightlyReport], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "report.json", report.to_json())
    page = render_html(report, history)
    atomic_write(out_dir / "report.html", page)
    return out_dir / "report.html"


def render_html(report: NightlyReport, history: list[NightlyReport]) -> str:
    nights = [*history, report]
    rows = "".join(_row(e) for e in report.entries)
    verdict = "all good" if report.exit_code == 0 else "PROBLEMS (exit 1)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Nightly rebuild {html.escape(report.started)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #bbb; padding: 4px 8px; font-size: 14px; vertical-align: top; }}
th {{ background: #eee; }}
.ok {{ background: #e3f6e3; }} .problem, .error {{ background: #fbe0e0; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; }}
</style></head><body>
<h1>Nightly rebuild: {html.escape(verdict)}</h1>
<p>Started {html.escape(report.started)}; tracker {html.escape(report.tracker or 'embedded')};
regression threshold +{report.regression_threshold * 100:.0f}% latency.
Emulated boards check outputs only: their timings are not performance figures.</p>
<table><tr><th>entry</th><th>status</th><th>reproducible</th><th>verification</th>
<th>latency ms (last night)</th><th>max abs error</th><th>trials</th><th>notes</th></tr>
{rows}</table>
<div class="plots">
<figure><figcaption>Latency per device and model, by night (real boards only)</figcaption>
{_latency_plot(nights)}</figure>
<figure><figcaption>Tuning curves: sum of the best kernel times after each trial</figcaption>
{_tuning_plot(report)}</figure>
{"".join(_minutes_figure(run) for run in report.tuning_minutes)}
</div></body></html>
"""


def _row(e: EntryResult) -> str:
    repro = {True: "yes", False: "NO", None: "no release"}[e.reproducible]
    latency = "-" if e.latency_ms is None else f"{e.latency_ms:.3f}"
    if e.previous_latency_ms is not None:
        latency += f" ({e.previous_latency_ms:.3f})"
    if e.latency_ms is not None and e.timing and e.timing != "measured":
        latency += f" {e.timing}"
    error = "-" if e.max_abs_error is None else f"{e.max_abs_error:.2e}"
    board = e.board or "not verified"
    notes = "; ".join(n for n in [*e.problems, e.error, e.release_note, e.verify_note] if n)
    cells = [e.id, e.status, repro, board, latency, error, str(e.trials), notes]
    return (f'<tr class="{html.escape(e.status)}">'
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>\n")


def _latency_plot(nights: list[NightlyReport]) -> str:
    series: dict[str, list[tuple[int, float]]] = {}
    for i, night in enumerate(nights):
        for e in night.entries:
            if e.latency_ms is not None:
                # Modeled and measured figures are separate series, never one line.
                name = e.id if (e.timing or "measured") == "measured" else f"{e.id}, {e.timing}"
                series.setdefault(name, []).append((i, e.latency_ms))
    fig, ax = _figure()
    for name, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("night")
    ax.set_ylabel("median latency (ms)")
    labels = [n.started[5:16].replace("T", " ") for n in nights]
    ax.set_xticks(range(len(nights)), labels, rotation=30)
    return _svg(fig, ax, bool(series), "no benchmarked entries yet")


def _tuning_plot(report: NightlyReport) -> str:
    fig, ax = _figure()
    drawn = False
    for e in report.entries:
        curve = e.tuning_curve_ms
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, label=e.id)
            drawn = True
    ax.set_xlabel("trials")
    ax.set_ylabel("sum of best kernel times (ms)")
    if drawn:
        ax.set_yscale("log")
    return _svg(fig, ax, drawn, "no tuning records (untuned builds)")


def _minutes_figure(run: TuningMinutes) -> str:
    """Best estimated latency so far against tuning minutes, one line per mode; each mode's
    built library and ONNX Runtime (timed alone at the end of the run) as dashed levels."""
    fig, ax = _figure()
    for i, mode in enumerate(run.modes):
        color = f"C{i}"
        if mode.curve:
            best, points = float("inf"), []
            for minute, ms in mode.curve:
                best = min(best, ms)
                points.append((minute, best))
            points.append((run.minutes, best))
            ax.step([p[0] for p in points], [p[1] for p in points], where="post", color=color,
                    label=f"{mode.mode} (estimate)")
        ax.axhline(mode.built_ms, color=color, linestyle="--", linewidth=1,
                   label=f"{mode.mode}: built {mode.built_ms:.2f} ms")
    if run.onnxruntime_ms is not None:
        ax.axhline(run.onnxruntime_ms, color="black", linestyle=":",
                   label=f"ONNX Runtime {run.onnxruntime_ms:.2f} ms")
    ax.set_xlim(0, run.minutes)
    ax.set_xlabel("minutes of pipeline.tune (transfer included)")
    ax.set_ylabel("model latency (ms)")
    ax.set_yscale("log")
    esc = html.escape
    return (f"<figure><figcaption>Tuning minutes, {esc(run.model)} on {esc(run.device)} (no logs "
            f"of its own): {esc(run.machine)}, {esc(run.started[:10])}; "
            f"<code>{esc(run.command)}</code></figcaption>\n"
            f"{_svg(fig, ax, bool(run.modes), 'no mode finished')}</figure>\n")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    return fig, fig.add_subplot()


def _svg(fig, ax, drawn: bool, empty_text: str) -> str:
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
