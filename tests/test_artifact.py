"""The one manifest schema: typed, versioned, strict about keys; atomic artifact folders."""

import json

import pytest

from pipeline.artifact.manifest import (
    LIB_NAME,
    DeviceInfo,
    Manifest,
    ModelInfo,
    TensorSpec,
    TuningInfo,
    Verification,
    check_hashes,
    read_manifest,
)
from pipeline.artifact.store import write_artifact
from pipeline.base.errors import UserError
from pipeline.base.variant import Variant


def _manifest() -> Manifest:
    return Manifest(
        model=ModelInfo("m", "zoo", "m", "ab" * 32, TensorSpec("input", (1, 3, 8, 8)),
                        TensorSpec("output", (1, 10))),
        device=DeviceInfo("host", {"kind": "llvm", "mcpu": "x"}, "host", "cd" * 32),
        variant=Variant.FP32, toolchain={"apache-tvm": "0.27.0.post1"},
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
    (lambda d: d.update(schema_version=1), "v1 is not edge-tvm-pipeline/artifact v5"),
    (lambda d: d.update(accuracy={"top1_agreement": 1.0}), "missing key 'eval_data' in Accuracy"),
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


def _tar_with(tmp_path, add):
    import io
    import tarfile

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        add(tar)
    return path


def _symlink(tar):
    import tarfile

    info = tarfile.TarInfo("lib.so")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _climb(tar):
    import io
    import tarfile

    info = tarfile.TarInfo("../../outside.txt")
    info.size = 3
    tar.addfile(info, io.BytesIO(b"bad"))


def _device(tar):
    import tarfile

    info = tarfile.TarInfo("null")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


@pytest.mark.parametrize("add, message", [(_symlink, "is a link"), (_climb, "outside"),
                                          (_device, "device or FIFO")])
def test_unpack_refuses_links_climbing_paths_and_devices(tmp_path, add, message):
    from pipeline.artifact.store import unpack

    with pytest.raises(UserError, match=message):
        unpack(_tar_with(tmp_path, add), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "outside.txt").exists()


def test_pack_is_reproducible_and_unpack_checks_hashes(tmp_path):
    import gzip
    import io
    import tarfile

    from pipeline.artifact.store import pack, unpack

    folder = _artifact(tmp_path)
    first, second = pack(folder, tmp_path / "a.tar.gz"), pack(folder, tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    assert unpack(first, tmp_path / "out") == read_manifest(folder)

    # The same tarball with one byte of the library changed is refused and leaves nothing.
    raw = io.BytesIO(gzip.decompress(first.read_bytes()))
    with tarfile.open(fileobj=raw) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for member, data in members:
            if member.name == "lib.so":
                data = data[:-1] + bytes([data[-1] ^ 1])
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(UserError, match="differ from the manifest: lib.so"):
        unpack(tampered, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def _artifact(tmp_path):
    lib = tmp_path / "built.so"
    lib.write_bytes(bytes(range(256)) * 64)
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    (logs_dir / "database_tuning_record.json").write_text('[0, [[], [], [0.001]]]\n')
    (logs_dir / "database_workload.json").write_text('["h", {}]\n')
    write_artifact(tmp_path / "art", lib, logs_dir, _manifest())
    return tmp_path / "art"
