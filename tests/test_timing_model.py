"""The modeled ARM board: the timing model (rpc/timing_model.c under Debian's qemu-aarch64) gives
the same cycles for the same code every time, ranks kernels whose order on a Cortex-A53/A72 is
known, and a modeled board's time evaluator reports the model's latency, labelled so."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.base.devices import load_device
from pipeline.base.errors import UserError
from pipeline.farm import modeled

KERNELS = Path(__file__).parent / "data" / "timing_kernels.c"


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """tests/data/timing_kernels.c, a static aarch64 program."""
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    assert compiler, "apt-get install g++-aarch64-linux-gnu (see .ci/run)"
    out = tmp_path_factory.mktemp("kernels") / "kernels"
    subprocess.run([compiler, "-O2", "-static", "-o", str(out), str(KERNELS)], check=True)
    return out


def _modeled_cycles(program: Path, device_name: str, plugin_argument: str | None = None):
    device = load_device(device_name)
    argument = plugin_argument or modeled.plugin_argument(device)
    done = subprocess.run([modeled.QEMU, "-cpu", device.emulated_cpu, "-plugin", argument,
                           str(program), str(program.with_suffix(".report"))],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return {name: int(value) for name, value in
            (line.split() for line in done.stdout.splitlines())}


@pytest.mark.parametrize("device", ["arm-a53", "rpi4"])
def test_the_model_gives_the_same_cycles_twice_and_ranks_known_kernels(kernels, device):
    first = _modeled_cycles(kernels, device)
    assert first == _modeled_cycles(kernels, device)
    assert set(first) == {"scalar_fma", "neon_fma", "naive_matmul", "blocked_matmul"}
    # NEON does four multiply-adds an instruction: well under half the scalar loop's time.
    assert first["neon_fma"] < first["scalar_fma"] / 2
    # The naive loop nest takes a new cache line for every multiply-add; the blocked one
    # streams whole rows (on the in-order A53 the stride prefetcher hides most of the naive
    # column walk, and four independent multiply-adds a step barely beat its one chain).
    assert first["blocked_matmul"] < first["naive_matmul"]
    if device == "rpi4":
        assert first["blocked_matmul"] < 0.75 * first["naive_matmul"]
    # 2M multiply-adds take at least 2M / (multiply-add units) cycles on either core.
    assert first["blocked_matmul"] > 128 ** 3 / 2


def test_the_out_of_order_core_hides_what_the_in_order_one_waits_for(kernels):
    a53, a72 = _modeled_cycles(kernels, "arm-a53"), _modeled_cycles(kernels, "rpi4")
    for kernel in a53:
        assert a72[kernel] < a53[kernel], kernel


def _with(argument: str, **changes) -> str:
    parts = argument.split(",")
    for key, value in changes.items():
        parts = [p for p in parts if not p.startswith(f"{key}=")] + [f"{key}={value}"]
    return ",".join(parts)


def test_smaller_caches_and_no_stride_prefetcher_cost_the_naive_loop_more(kernels):
    argument = modeled.plugin_argument(load_device("arm-a53"))
    normal = _modeled_cycles(kernels, "arm-a53")
    shrunk = _modeled_cycles(kernels, "arm-a53", _with(argument, l1_kb=8, l2_kb=32))
    assert shrunk["naive_matmul"] > normal["naive_matmul"]
    unprefetched = _modeled_cycles(kernels, "arm-a53", _with(argument, stride_prefetch=0))
    assert unprefetched["naive_matmul"] > 1.5 * normal["naive_matmul"]
    assert unprefetched["blocked_matmul"] < 0.75 * unprefetched["naive_matmul"]


def test_the_plugin_refuses_an_unknown_parameter(kernels):
    argument = modeled.plugin_argument(load_device("arm-a53")) + ",warp_drive=1"
    done = subprocess.run([modeled.QEMU, "-plugin", argument, str(kernels)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "unknown option warp_drive=1" in done.stdout + done.stderr


def test_a_timing_model_must_name_every_parameter(tmp_path):
    import yaml

    from pipeline.base.devices import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / "arm-a53.yaml").read_text())
    del raw["timing_model"]["l2_kb"]
    path = tmp_path / "arm-a53.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"timing_model' lacks \['l2_kb'\]"):
        load_device(str(path))
    raw["timing_model"]["l2_kb"] = -1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="timing_model.l2_kb"):
        load_device(str(path))


def test_every_figure_names_the_model_and_its_version():
    assert modeled.label(load_device("arm-a53")) == (
        f"modeled (Cortex-A53 model v{modeled.model_version()})")
    assert modeled.label(load_device("rpi4")).startswith("modeled (Cortex-A72 model v")
    with pytest.raises(UserError, match="no timing_model"):
        modeled.label(load_device("x86-nuc"))


@pytest.mark.slow
def test_a_modeled_board_reports_the_same_labelled_latency_from_two_fresh_farms(
        tmp_path, tiny_model):
    """The whole path: TVM's time evaluator on a modeled board (RPC) returns the model's
    time; two fresh farms give the same figures for the same library and input."""
    from pipeline.compile.build import build_library
    from pipeline.compile.lowering import lower
    from pipeline.farm.boards import run_on_board
    from pipeline.farm.local import local_farm
    from pipeline.frontend.importer import import_model

    device = load_device("arm-a53")
    lib = build_library(lower(import_model(tiny_model).mod, device.tvm_target()), device, None,
                        tmp_path / "lib.so").path
    x = tiny_model.sample_input()
    runs = []
    for _ in range(2):
        with local_farm(device) as farm:
            runs.append(run_on_board(lib, farm.address, device.rpc_key, x))
    first, second = runs
    assert first.board.modeled == modeled.label(device) and first.board.threads == 1
    assert first.board.timing == modeled.label(device)
    assert len(first.times_ms) == 3 and all(t > 0 for t in first.times_ms)
    assert first.times_ms == second.times_ms
    np.testing.assert_allclose(first.output, tiny_model.reference_output(x), rtol=1e-4,
                               atol=1e-5)
