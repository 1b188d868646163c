"""The one manifest schema: typed, versioned, strict about keys; atomic artifact folders."""

import json

import pytest

from pipeline.artifact import (
    LIB_NAME,
    DeviceInfo,
    Manifest,
    ModelInfo,
    TensorSpec,
    TuningInfo,
    Verification,
    check_hashes,
    read_manifest,
    write_artifact,
)
from pipeline.errors import UserError


def _manifest() -> Manifest:
    return Manifest(
        model=ModelInfo("m", "zoo", "m", "ab" * 32, TensorSpec("input", (1, 3, 8, 8)),
                        TensorSpec("output", (1, 10))),
        device=DeviceInfo("host", {"kind": "llvm", "mcpu": "x"}, "host", "cd" * 32),
        variant="fp32", toolchain={"apache-tvm": "0.27.0.post1"},
        tuning=TuningInfo(16, 2, 7, {"database_tuning_record.json": "ef" * 32}), files={},
        verification=Verification("host", False, 1e-7, True, 0.5, 0.6))


def test_round_trip_through_json(tmp_path):
    lib = tmp_path / "built.so"
    lib.write_bytes(b"\x7fELF not really")
    written = write_artifact(tmp_path / "art", lib, None, _manifest())
    assert set(written.files) == {LIB_NAME}
    assert read_manifest(tmp_path / "art") == written
    assert check_hashes(tmp_path / "art", written) == []
    assert not list(tmp_path.glob(".art.*"))  # no staging folder left behind


def test_tampered_library_is_named(tmp_path):
    lib = tmp_path / "built.so"
    lib.write_bytes(b"library")
    manifest = write_artifact(tmp_path / "art", lib, None, _manifest())
    (tmp_path / "art" / LIB_NAME).write_bytes(b"librarY")
    assert check_hashes(tmp_path / "art", manifest) == [LIB_NAME]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=99), "not edge-tvm-pipeline/artifact v1"),
    (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda d: d["model"].pop("sha256"), "missing key 'sha256' in ModelInfo"),
    (lambda d: d["model"]["input"].update(layout="NCHW"), r"unknown keys \['layout'\]"),
])
def test_strict_schema(tmp_path, change, message):
    raw = json.loads(_manifest().to_json())
    change(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=message):
        read_manifest(tmp_path)


def test_failed_write_leaves_the_previous_artifact(tmp_path):
    lib = tmp_path / "built.so"
    lib.write_bytes(b"v1")
    write_artifact(tmp_path / "art", lib, None, _manifest())
    with pytest.raises(FileNotFoundError):
        write_artifact(tmp_path / "art", tmp_path / "missing.so", None, _manifest())
    assert (tmp_path / "art" / LIB_NAME).read_bytes() == b"v1"
    assert not list(tmp_path.glob(".art.*"))
