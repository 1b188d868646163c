"""Per-layer sensitivity: the SQNR of the model's outputs when only that layer computes in int8,
on a few inputs of every evaluation set (the worst set's figure counts).

All layers are measured with one compiled module (`simulate_int8`: each layer switchable
between its int8 arithmetic, simulated exactly in float, and float), so the cost is one compile
and layers x inputs runs, not a compile per layer. The accuracy fallback keeps the most
sensitive layers in float first; the manifest records every layer's figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipeline.compile.host import compile_for_host
from pipeline.quantization.accuracy import sqnr_db
from pipeline.quantization.plan import Int8Plan
from pipeline.quantization.rewrite import simulate_int8

log = logging.getLogger(__name__)

INPUTS_PER_SET = 2  # one layer's noise is a property of the layer, stable across inputs


class Simulation:
    """The model with every planned layer switchable between int8 and float, compiled for
    this machine, and the inputs (with their fp32 outputs) it is measured on."""

    def __init__(self, mod, plan: Int8Plan, inputs: Sequence[np.ndarray],
                 references: Sequence[np.ndarray]):
        self._module = compile_for_host(simulate_int8(mod, plan), nhwc=False)
        self.names = [layer.name for layer in plan.layers]
        self._inputs = [[x[None] for x in group] for group in inputs]
        self._references = list(references)

    def worst_sqnr(self, int8_layers: set[str]) -> float:
        """The lowest SQNR over the input groups with `int8_layers` in int8, the rest float."""
        switches = np.array([name in int8_layers for name in self.names], "float32")
        outputs = iter(self._module.map((x for group in self._inputs for x in group), switches))
        return min(sqnr_db(reference, np.concatenate([next(outputs)[0] for _ in group]))
                   for group, reference in zip(self._inputs, self._references, strict=True))


def layer_sensitivity(simulation: Simulation) -> dict[str, float]:
    """Layer name -> worst SQNR (dB) of the outputs with only that layer in int8."""
    figures = {}
    for i, name in enumerate(simulation.names):
        figures[name] = round(simulation.worst_sqnr({name}), 2)
        if (i + 1) % 10 == 0 or i + 1 == len(simulation.names):
            log.info(f"  sensitivity: {i + 1}/{len(simulation.names)} layers")
    return figures
