"""Quantized artifacts for ARM classes, run on emulated boards: int8 on arm-a53 (NEON, no dot
product) and fp16 on a Cortex-A76 class (ARMv8.2 with fp16 arithmetic). The machine code is
read back with the cross objdump to show what the library computes in."""

import re
import shutil
import subprocess

import pytest
import yaml

from pipeline.artifact.manifest import LIB_NAME, read_manifest
from pipeline.base.devices import CONFIG_DIR, load_device
from pipeline.base.variant import Variant
from pipeline.job.build_job import JobSpec, run_job
from pipeline.quantization.stage import QuantizeOptions

pytestmark = pytest.mark.slow
# 16 inputs per evaluation set: one near-tie of the top two classes is 6 points of top-1, so
# the gate here is wide; the tests that exercise the gate set their own.
FAST = {"calibration_count": 8, "eval_count": 16, "max_drop_points": 10.0}
OBJDUMP = "aarch64-linux-gnu-objdump"


def _disassembly(lib) -> str:
    assert shutil.which(OBJDUMP), "binutils-aarch64-linux-gnu comes with g++-aarch64-linux-gnu"
    return subprocess.run([OBJDUMP, "-d", str(lib)], capture_output=True, text=True,
                          check=True).stdout


def _device(tmp_path, name: str, **changes):
    config = yaml.safe_load((CONFIG_DIR / "arm-a53.yaml").read_text())
    config.update(name=name, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_device(str(path))


def test_arm_a53_int8_artifact_runs_on_a_modeled_board(tmp_path, tiny_model):
    device = _device(tmp_path, "arm-a53", tuning={"trials": 8, "trials_per_task": 8})
    result = run_job(JobSpec(device, tiny_model, 8, None, tmp_path / "artifact", tmp_path / "logs",
                     options=QuantizeOptions(variant=Variant.INT8, **FAST)))
    manifest = read_manifest(result.artifact)
    check = manifest.verification
    assert manifest.variant is Variant.INT8 and manifest.quantization.int8_layers == 5
    assert check.emulated and check.timing.startswith("modeled (Cortex-A53 model v")
    assert check.latency_ms_median > 0
    assert check.max_abs_error < 0.02 * 10 and check.top1_matches_framework
    assert manifest.tuning.trials >= 8
    code = _disassembly(result.artifact / LIB_NAME)
    # NEON widening 8-bit multiplies (no sdot/udot on a Cortex-A53): the int8 arithmetic; the
    # 1x1 convolutions' pairs of int16 products added into int32 lanes are our intrinsic's.
    widening = re.findall(r"\b[su]mlal2?\b|\b[su]mull2?\b", code)
    assert len(widening) > 20, "no 8-bit widening multiplies in the aarch64 library"
    assert re.search(r"\bsmlal\s+v\d+\.8h, v\d+\.8b", code)
    assert re.search(r"\bsadalp\s+v\d+\.4s, v\d+\.8h", code)
    assert not re.search(r"\b[su]dot\b", code)


def test_fp16_artifact_on_an_emulated_cortex_a76_board(tmp_path, tiny_model):
    device = _device(tmp_path, "arm-a76", description="Cortex-A76 (ARMv8.2, fp16, dotprod)",
                     target={"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                             "mcpu": "cortex-a76", "mattr": ["+neon", "+fullfp16"]},
                     rpc_key="arm-a76", emulated_cpu="cortex-a76",
                     capabilities=["fp16", "int8", "neon", "dotprod"])
    result = run_job(JobSpec(device, tiny_model, 0, None, tmp_path / "artifact", tmp_path / "logs",
                     options=QuantizeOptions(variant=Variant.FP16, **FAST)))
    manifest = read_manifest(result.artifact)
    assert manifest.variant is Variant.FP16 and manifest.verification.emulated
    assert manifest.accuracy.top1_agreement >= 0.9 and manifest.accuracy.sqnr_db > 30
    # Half-precision vector arithmetic (fmla/fmul/fadd on .8h or .4h lanes).
    assert re.search(r"\bf(mla|mul|add)\s+v\d+\.[48]h", _disassembly(result.artifact / LIB_NAME))
