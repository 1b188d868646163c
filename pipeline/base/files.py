"""File utilities: content hashes, writes that readers never see half-done, YAML read with
errors that name the file."""

from __future__ import annotations

import hashlib
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


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary sibling, then rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
