"""Accuracy of a quantized model against its fp32 original, and the gate that refuses to package
one that lost too much.

The drop is measured in points: with labels, fp32 accuracy minus quantized accuracy; without,
the share of inputs whose top-1 class changed (100 - top-1 agreement in percent).
"""

from __future__ import annotations

import numpy as np

from pipeline.artifact.manifest import Accuracy, DataInfo
from pipeline.base.errors import UserError


def compare(reference: np.ndarray, quantized: np.ndarray, labels: np.ndarray | None,
            eval_data: DataInfo, max_drop_points: float, forced: bool = False) -> Accuracy:
    """`reference` and `quantized`: (N, classes) outputs of the fp32 and quantized models."""
    reference = reference.reshape(len(reference), -1).astype("float64")
    quantized = quantized.reshape(len(quantized), -1).astype("float64")
    top1_ref, top1_q = reference.argmax(1), quantized.argmax(1)
    agreement = float(np.mean(top1_ref == top1_q))
    top5 = None
    if reference.shape[1] >= 5:
        ref5 = np.argsort(-reference, axis=1)[:, :5]
        q5 = np.argsort(-quantized, axis=1)[:, :5]
        top5 = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref5, q5, strict=True)]))
    sqnr = sqnr_db(reference, quantized)
    accuracy = reference_accuracy = None
    if labels is not None:
        accuracy = float(np.mean(top1_q == labels))
        reference_accuracy = float(np.mean(top1_ref == labels))
        drop = 100 * (reference_accuracy - accuracy)
    else:
        drop = 100 * (1 - agreement)
    return Accuracy(eval_data, agreement, top5, round(sqnr, 3), accuracy, reference_accuracy,
                    round(drop, 3), max_drop_points, forced)


def sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """Power of `reference` over the power of its difference from `output`, in dB."""
    noise = float(np.sum((reference.astype("float64") - output) ** 2))
    signal = float(np.sum(reference.astype("float64") ** 2))
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))


def describe(report: Accuracy) -> str:
    parts = [f"top-1 agreement {100 * report.top1_agreement:.1f}%"]
    if report.top5_overlap is not None:
        parts.append(f"top-5 overlap {100 * report.top5_overlap:.1f}%")
    parts.append(f"SQNR {report.sqnr_db:.1f} dB")
    if report.accuracy is not None and report.reference_accuracy is not None:
        parts.append(f"accuracy {100 * report.accuracy:.2f}% (fp32 "
                     f"{100 * report.reference_accuracy:.2f}%)")
    return ", ".join(parts) + f" on {report.eval_data.count} inputs from {report.eval_data.spec}"


def worst(reports: tuple[Accuracy, ...]) -> Accuracy:
    """The report of the set that lost most (then: of the lowest SQNR)."""
    return max(reports, key=lambda report: (report.drop_points, -report.sqnr_db))


def within(report: Accuracy) -> bool:
    return report.drop_points <= report.max_drop_points


def require(report: Accuracy, variant: str, most_sensitive: tuple[str, ...] = ()) -> None:
    """Refuse an artifact that lost more than the threshold, unless forced."""
    if within(report) or report.forced:
        return
    layers = f" (most sensitive first: {','.join(most_sensitive)})" if most_sensitive else ""
    raise UserError(
        f"the {variant} model loses {report.drop_points:.2f} points against fp32 (allowed: "
        f"{report.max_drop_points:g}): {describe(report)}. Not packaged. Try another "
        f"--calibration-method or more --calibration data, keep sensitive layers in float "
        f"with --keep-float{layers}, raise --max-accuracy-drop, or package anyway with "
        f"--force.")
