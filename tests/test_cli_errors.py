"""Bad input: one clear paragraph on stderr, exit status 2, nothing half-written."""

import pytest

from pipeline import build as build_cli
from pipeline import tune as tune_cli
from pipeline.base.devices import CONFIG_DIR
from pipeline.farm.tracker import free_port


def _run(main, argv, capsys):
    status = main(argv)
    err = capsys.readouterr().err
    return status, err


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "artifact"


@pytest.mark.parametrize("extra, message", [
    (["--device", "x86-nucc", "--model", "tiny-cnn"], "Unknown device 'x86-nucc'"),
    (["--device", "host", "--model", "tiny-cnnn"], "Unknown model 'tiny-cnnn'"),
    (["--device", "host", "--model", "missing.onnx"], "missing.onnx does not exist"),
    (["--device", "host", "--model", "tiny-cnn", "--input-shape", "1,1,32,32"],
     r"Input shape \[1, 1, 32, 32\] does not fit"),
    (["--device", "host", "--model", "tiny-cnn", "--tracker", "localhost"], "not HOST:PORT"),
])
def test_bad_input_exits_2_with_a_clear_error(extra, message, capsys, out_dir, tmp_path):
    status, err = _run(tune_cli.main, [*extra, "--out", str(out_dir), "--logs",
                                       str(tmp_path / "logs")], capsys)
    assert status == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err
    assert not out_dir.exists() and not (tmp_path / "logs").exists()


def test_corrupt_onnx_file(tmp_path, capsys, out_dir):
    bad = tmp_path / "net.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    status, err = _run(tune_cli.main, ["--device", "host", "--model", str(bad), "--out",
                                       str(out_dir)], capsys)
    assert status == 2 and "is not a valid ONNX model" in err
    assert not out_dir.exists()


def test_device_config_with_a_typo(tmp_path, capsys, out_dir):
    typo = tmp_path / "x86-nuc.yaml"
    typo.write_text((CONFIG_DIR / "x86-nuc.yaml").read_text().replace("cores:", "coers:"))
    status, err = _run(build_cli.main, ["--device", str(typo), "--model", "tiny-cnn", "--out",
                                        str(out_dir)], capsys)
    assert status == 2 and "key 'coers' is unknown" in err and str(typo) in err


def test_tracker_that_does_not_answer(capsys, out_dir, tmp_path):
    port = free_port()  # nothing listens there
    status, err = _run(tune_cli.main, ["--device", "host", "--model", "tiny-cnn", "--trials", "8",
                                       "--tracker", f"127.0.0.1:{port}", "--out", str(out_dir),
                                       "--logs", str(tmp_path / "logs")], capsys)
    assert status == 2
    assert f"tracker at 127.0.0.1:{port} does not answer" in err
    assert "query_rpc_tracker" in err
    assert not out_dir.exists()


def test_logs_tuned_for_another_target(tmp_path, capsys, out_dir, host_farm):
    """Logs of the host class put where x86-nuc's belong: refused by name, nothing built."""
    import json

    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    folder = tmp_path / "logs" / "x86-nuc" / "tiny-cnn-fp32"
    folder.mkdir(parents=True)
    out = te.compute((1,), lambda _: tvm.tirx.const(0, "int32"), name="any")
    workload = ms.database.Workload(tvm.IRModule({"main": te.create_prim_func([out])}))
    (folder / "database_workload.json").write_text(json.dumps(workload.as_json()) + "\n")
    record = [0, [[[], []], [1.0e-5], {"kind": "llvm", "mcpu": "icelake-server",
                                         "mtriple": "x86_64-linux-gnu", "keys": ["cpu"]}, []]]
    (folder / "database_tuning_record.json").write_text(json.dumps(record) + "\n")
    status, err = _run(build_cli.main, ["--device", "x86-nuc", "--model", "tiny-cnn", "--tracker",
                                        str(host_farm), "--logs", str(tmp_path / "logs"),
                                        "--out", str(out_dir)], capsys)
    assert status == 2, err
    assert "tuned for another target" in err and "icelake-server" in err
    assert not out_dir.exists()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--device", "--model", "--trials", "--tracker", "resume", "examples"):
        assert word in text
