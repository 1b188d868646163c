"""Post-training quantization of an imported Relax module: int8 calibrated on sample data (or
fp16), its accuracy measured against fp32, and the record a rebuild applies as it was.

The public surface: the stage `quantize` (calibrate, apply, evaluate, with its accuracy gate)
and its parts `calibrate`, `apply_int8` and `evaluate`; `requantize` (an artifact's recorded
plan applied again); `QuantizeOptions`, `Quantized`, and the plan's JSON form. Calibration
methods are observers (`observers`), per-target choices a policy (`policy`), the Relax rewrite
one module (`rewrite`).
"""

from pipeline.quantization.accuracy import compare as evaluate
from pipeline.quantization.calibration import calibrate
from pipeline.quantization.plan import Int8Plan, plan_from_json, plan_to_json
from pipeline.quantization.rewrite import apply_int8
from pipeline.quantization.stage import Quantized, QuantizeOptions, quantize, requantize

__all__ = ["Int8Plan", "QuantizeOptions", "Quantized", "apply_int8", "calibrate", "evaluate",
           "plan_from_json", "plan_to_json", "quantize", "requantize"]
