from pathlib import Path

import pytest

from pipeline.artifact.tuning_logs import buildable_device, check_target, count_records, log_dir
from pipeline.base.devices import CONFIG_DIR, available_devices, detect_host_target, load_device
from pipeline.base.errors import UserError
from pipeline.base.variant import ArtifactKey, Variant


def test_every_shipped_device_class_loads_with_a_valid_target():
    names = available_devices()
    assert {"arm-a53", "rpi4", "x86-nuc", "host"} <= set(names)
    for name in names:
        device = load_device(name)
        target = device.tvm_target()
        assert target.kind.name == "llvm"
        assert device.rpc_key
        assert device.tuning.trials_per_task >= 1


def test_arm_a53_has_neon_but_no_dotprod_or_fp16():
    device = load_device("arm-a53")
    features = {k: bool(v) for k, v in device.tvm_target().attrs.items()
                if k.startswith("feature.")}
    assert features["feature.has_asimd"] and not features["feature.has_dotprod"]
    assert not features["feature.has_fp16_simd"]
    assert "fp16" not in device.capabilities and "dotprod" not in device.capabilities


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _nuc_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (CONFIG_DIR / "x86-nuc.yaml").read_text()
    assert old in text
    return _write(tmp_path, "x86-nuc", text.replace(old, new))


@pytest.mark.parametrize("old, new, message", [
    ("rpc_key:", "rpc_kee:", r"x86-nuc.yaml: key 'rpc_kee' is unknown"),
    ("mcpu: x86-64-v3", "mcpu: x86-64-v9", r"key 'target.mcpu'.*x86-64-v9.*typo"),
    ("mtriple:", "mtripel:", r"key 'target.mtripel' is unknown"),
    ("capabilities: [int8, avx2]", "capabilities: [int8, avx3]", r"capabilities.*avx3"),
])
def test_typos_are_named_with_the_file_and_key(tmp_path, old, new, message):
    with pytest.raises(UserError, match=message):
        load_device(str(_nuc_with(tmp_path, old, new)))


def test_missing_cross_compiler_names_the_key(tmp_path):
    path = _nuc_with(tmp_path, "cross_compiler: g++", "cross_compiler: no-such-g++")
    device = load_device(str(path))
    with pytest.raises(UserError, match=r"x86-nuc.yaml: cross_compiler 'no-such-g\+\+'"):
        device.compiler()


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(UserError, match=r"Unknown device 'arm-a35'.*arm-a53.*x86-nuc"):
        load_device("arm-a35")


def test_host_target_only_uses_extensions_this_cpu_reports():
    import tvm
    from tvm.target import codegen

    from pipeline.base.devices import _X86_FEATURES

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    target = detect_host_target()
    implied = codegen.llvm_get_cpu_features(tvm.target.Target(target))
    missing = [flag for flag, llvm in _X86_FEATURES.items()
               if llvm in implied and flag not in flags]
    assert missing == []
    if "avx512f" in flags:
        assert "avx512f" in implied  # and it does not settle for less than the CPU has


def _fake_cpuinfo(tmp_path: Path, model: str, drop: tuple[str, ...] = ()) -> Path:
    """A /proc/cpuinfo of a CPU with exactly the x86 extensions LLVM's `model` implies."""
    import tvm
    from tvm.target import codegen

    from pipeline.base.devices import _X86_FEATURES

    implied = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": model}))
    flags = ["fpu", "sse", "sse2"] + [flag for flag, llvm in _X86_FEATURES.items()
                                      if llvm in implied and flag not in drop]
    path = tmp_path / f"cpuinfo-{model}"
    path.write_text(f"processor\t: 0\nmodel name\t: fake {model}\nflags\t\t: "
                    f"{' '.join(flags)}\n\n")
    return path


ICELAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server",
           "num-cores": 2}
NUC = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3", "num-cores": 4}


@pytest.mark.parametrize("cpu, drop, icelake, nuc", [
    ("sapphirerapids", (), True, True),  # AMX, AVX-512-FP16: a superset of Ice Lake's
    ("znver4", (), True, True),
    ("icelake-server", (), True, True),
    ("icelake-server", ("avx512_vnni",), False, True),  # a hypervisor hiding one extension
    ("alderlake", (), False, True),  # AVX2 + AVX-VNNI, no AVX-512
    ("x86-64-v2", (), False, False),  # no AVX2
])
def test_which_targets_a_cpu_runs_is_read_off_its_cpuinfo(tmp_path, cpu, drop, icelake, nuc):
    from pipeline.base.devices import runs_target

    cpuinfo = _fake_cpuinfo(tmp_path, cpu, drop)
    assert runs_target(ICELAKE, cpuinfo) is icelake
    assert runs_target(NUC, cpuinfo) is nuc
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"}
    assert not runs_target(arm, cpuinfo)


@pytest.mark.parametrize("cpu, drop, borrowed, mcpu", [
    ("sapphirerapids", (), "x86-avx512", "icelake-server"),
    ("znver4", (), "x86-avx512", "icelake-server"),
    ("icelake-server", ("avx512_vnni",), "x86-nuc", "x86-64-v3"),
    ("alderlake", (), "x86-nuc", "x86-64-v3"),
    ("x86-64-v2", (), None, None),
])
def test_host_builds_with_the_fastest_committed_class_this_cpu_runs(tmp_path, monkeypatch, cpu,
                                                                     drop, borrowed, mcpu):
    """`host` has no logs of its own: an AVX-512 + VNNI CPU builds with x86-avx512's, an
    AVX2-only CPU (or one whose hypervisor hides VNNI) with x86-nuc's, for the class's target;
    a CPU without AVX2 builds untuned for itself."""
    from pipeline.base import devices
    from pipeline.base.paths import TUNING_LOGS
    from pipeline.job.build_job import logs_for

    monkeypatch.setattr(devices, "CPUINFO", _fake_cpuinfo(tmp_path, cpu, drop))
    host = load_device("host")
    assert host.detected
    key = ArtifactKey("host", "efficientnet-lite0", Variant.FP32)
    source = logs_for(host, key, TUNING_LOGS)
    assert getattr(source.borrowed_from, "name", None) == borrowed
    if borrowed is None:
        assert source.device is host and source.folder == log_dir(key)
        return
    assert source.folder == log_dir(ArtifactKey(borrowed, key.model, key.variant))
    assert source.device.target["mcpu"] == mcpu and source.device.name == "host"
    # The default budget is the lender's, which its committed logs meet: nothing is tuned.
    assert source.budget == load_device(borrowed).tuning.trials <= count_records(source.folder)
    check_target(source.folder, source.device.target, "host")
    # --retune never borrows: it tunes this exact CPU into host's own folder, its search
    # starting from the class's records.
    retune = logs_for(host, key, TUNING_LOGS, retune=True)
    assert retune.folder == log_dir(key) and retune.device is host
    assert retune.seed == source.folder


def test_a_seeded_search_sees_the_class_records_and_writes_only_its_own(tmp_path):
    """The warm start of --retune: the database MetaSchedule searches with answers top-k
    queries with the class's best valid records of that workload (fastest first) while the
    host's own logs are empty; everything committed goes to the host's own logs only."""
    from pipeline.artifact.tuning_logs import open_database, seeded_database

    seed = log_dir(ArtifactKey("x86-avx512", "efficientnet-lite0", Variant.FP32))
    before = (seed / "database_tuning_record.json").read_bytes()
    own = open_database(tmp_path / "own")
    database, seeds = seeded_database(own, seed)
    assert 0 < seeds <= count_records(seed)
    records = open_database(seed).get_all_tuning_records()
    record = records[-1]  # the workload tuned last has a full round of records
    workload = database.commit_workload(record.workload.mod)
    top = database.get_top_k(workload, 5)
    assert len(top) == 5 and len(own) == 0
    times = [sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in top]
    assert times == sorted(times) and times[-1] < 1e9
    database.commit_tuning_record(top[0])
    assert len(own) == 1 and count_records(tmp_path / "own") == 1
    assert database.get_top_k(workload, 5)[0].run_secs == top[0].run_secs
    assert (seed / "database_tuning_record.json").read_bytes() == before


def test_classes_rank_by_the_extensions_their_cpu_model_implies():
    from pipeline.base.devices import x86_classes_fastest_first

    assert [c.name for c in x86_classes_fastest_first()] == ["x86-avx512", "x86-nuc"]


def test_logs_of_a_cpu_model_build_on_a_host_that_runs_it_and_are_refused_elsewhere(
        tmp_path, monkeypatch):
    from pipeline.base import devices

    folder = log_dir(ArtifactKey("x86-avx512", "efficientnet-lite0", Variant.FP32))
    monkeypatch.setattr(devices, "CPUINFO", _fake_cpuinfo(tmp_path, "znver4"))
    assert buildable_device(load_device("host"), folder).target == ICELAKE
    monkeypatch.setattr(devices, "CPUINFO", _fake_cpuinfo(tmp_path, "alderlake"))
    host = load_device("host")
    assert buildable_device(host, folder) is host
    with pytest.raises(UserError, match=r"tuned for another target.*icelake-server"):
        check_target(folder, host.target, "host")
    assert buildable_device(load_device("x86-nuc"), folder).target["mcpu"] == "x86-64-v3"
