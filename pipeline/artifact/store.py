"""Writing artifacts (assembled aside, renamed into place) and packing them as one
reproducible .tar.gz; unpacking checks every member before writing anything."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from pipeline.artifact.manifest import (
    LIB_NAME,
    LOGS_DIRNAME,
    MANIFEST_NAME,
    Manifest,
    check_hashes,
    read_intact,
    read_manifest,
)
from pipeline.artifact.tuning_logs import LOG_FILES
from pipeline.base.errors import UserError
from pipeline.base.files import require_writable_folder, sha256_file
from pipeline.base.variant import ArtifactKey


def check_destination(dest: Path, key: ArtifactKey) -> None:
    """Refuse, before any work, an artifact destination that is not the pipeline's to replace:
    anything but a folder that is empty, absent, or holds an artifact of the same key."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UserError(f"{dest} exists and is not a folder; the artifact would replace it. "
                        f"Give --out a new folder.")
    if dest.is_dir() and any(dest.iterdir()):
        try:
            found = read_manifest(dest).key
        except UserError:
            found = None
        if found != key:
            what = f"an artifact of {found.id}" if found else "files that are not an artifact"
            raise UserError(f"{dest} holds {what}; the pipeline replaces only an earlier "
                            f"artifact of {key.id}. Give --out another folder, or move that "
                            f"one aside yourself.")
    require_writable_folder(dest.parent, "artifact")


def write_artifact(dest: Path, lib: Path, log_folder: Path | None,
                   manifest_without_files: Manifest, extras: dict[str, str] | None = None
                   ) -> Manifest:
    """Assemble lib, logs, `extras` (file name -> text) and manifest in a temporary sibling of
    `dest`, then swap it in (replacing only an earlier artifact of the same key)."""
    dest = dest.absolute()
    check_destination(dest, manifest_without_files.key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    old = staging.with_name(staging.name.replace(".staging-", ".old-"))
    try:
        shutil.copy2(lib, staging / LIB_NAME)
        files = {LIB_NAME: sha256_file(staging / LIB_NAME)}
        for name, text in sorted((extras or {}).items()):
            (staging / name).write_text(text)
            files[name] = sha256_file(staging / name)
        if log_folder is not None:
            (staging / LOGS_DIRNAME).mkdir()
            for name in LOG_FILES:
                if (log_folder / name).exists():
                    shutil.copy2(log_folder / name, staging / LOGS_DIRNAME / name)
                    files[f"{LOGS_DIRNAME}/{name}"] = sha256_file(staging / LOGS_DIRNAME / name)
        manifest = replace(manifest_without_files, files=files)
        tmp_manifest = staging / (MANIFEST_NAME + ".tmp")
        tmp_manifest.write_text(manifest.to_json())
        tmp_manifest.replace(staging / MANIFEST_NAME)
        if dest.exists():
            dest.replace(old)
        staging.replace(dest)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.replace(dest)  # the earlier artifact stays where it was
        raise


def pack(folder: Path, tarball: Path) -> Path:
    """The artifact as one .tar.gz, byte-reproducible (sorted names, zeroed times and owners)."""
    import gzip
    import tarfile

    manifest = read_intact(folder)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in [MANIFEST_NAME, *sorted(manifest.files)]:
            info = tar.gettarinfo(str(folder / rel), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with open(folder / rel, "rb") as handle:
                tar.addfile(info, handle)
    tmp.replace(tarball)
    return tarball


def unpack(tarball: Path, dest: Path) -> Manifest:
    """Extract an artifact tarball into `dest` (which must not exist) and check its hashes.

    Refuses, before writing anything: paths that are absolute or climb out with `..`, links of
    any kind, device files and FIFOs, and files the manifest does not list."""
    import tarfile

    if dest.exists():
        raise UserError(f"{dest} exists; unpack into a new folder.")
    try:
        tar = tarfile.open(tarball, "r:*")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as err:
        raise UserError(f"{tarball} is not a readable tarball ({err}).") from None
    with tar:
        members = tar.getmembers()
        for member in members:
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise UserError(f"{tarball}: member '{member.name}' points outside the target "
                                f"folder; refused, nothing extracted.")
            if not (member.isfile() or member.isdir()):
                kind = "a link" if member.issym() or member.islnk() else "a device or FIFO"
                raise UserError(f"{tarball}: member '{member.name}' is {kind}; artifacts hold "
                                f"only plain files. Refused, nothing extracted.")
        staging = dest.with_name(f".{dest.name}.unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            tar.extractall(staging, filter="data")
            manifest = read_manifest(staging)
            listed = {MANIFEST_NAME, *manifest.files}
            extra = [m.name for m in members if m.isfile() and m.name not in listed]
            damaged = check_hashes(staging, manifest)
            if extra or damaged:
                raise UserError(f"{tarball}: " + "; ".join(
                    ([f"files the manifest does not list: {', '.join(extra)}"] if extra else [])
                    + ([f"files that differ from the manifest: {', '.join(damaged)}"]
                       if damaged else [])) + ". Refused.")
            staging.replace(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return manifest


