"""File utilities: content hashes, writes that readers never see half-done, YAML read with
errors that name the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.base.errors import UserError


def read_yaml(path: Path, what: str) -> Any:
    """The YAML file `what` (a device class, an inventory, a matrix) at `path`, or an error that
    names the file and what is wrong with it."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"Cannot read the {what} {path} ({err}).") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err}). Fix the file's syntax.") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plain_name(text: str, what: str) -> str:
    """`text` if it can be one segment of a path: not empty, no separator, not hidden or a
    parent. Names from configs and manifests become paths; `../..` must not."""
    if (not isinstance(text, str) or not text or text.startswith(".") or "/" in text
            or "\\" in text or "\0" in text):
        raise UserError(f"{what} {text!r} is not a plain name (letters, digits, '-', '_', '.'; "
                        f"no '/', not starting with '.'): it would name a path.")
    return text


def require_writable_folder(folder: Path, what: str, writable: bool = True) -> None:
    """Refuse, before any work, a folder that cannot be created or written: one under a regular
    file, or (when it is to be `writable`) in a folder this user may not write."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"The {what} folder {folder} cannot be made: {existing} is not a folder. "
                        f"Choose another path.")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The {what} folder {folder} cannot be written: {existing} is not "
                        f"writable by this user. Choose another path or fix its permissions.")


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a temporary sibling, then rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
