"""Post-training quantization of an imported Relax module: int8 calibrated on sample data (or
fp16), its accuracy measured against fp32, and the record a rebuild applies as it was.

The public surface: `quantize` (the stage: calibrate, apply, evaluate, with its accuracy gate),
`requantize` (apply an artifact's recorded plan), `QuantizeOptions`, `Quantized`, and the plan's
JSON form. Calibration methods are observers (`observers`), per-target choices a policy
(`policy`), the Relax rewrite one module (`rewrite`).
"""

from pipeline.quantization.plan import Int8Plan, plan_from_json, plan_to_json
from pipeline.quantization.stage import Quantized, QuantizeOptions, quantize, requantize

__all__ = ["Int8Plan", "QuantizeOptions", "Quantized", "plan_from_json", "plan_to_json",
           "quantize", "requantize"]
