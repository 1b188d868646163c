"""The embedded farm: with no --tracker, the pipeline starts its own on this machine.

A loopback tracker and local boards of the device class (x86 classes natively, aarch64 classes
as emulated boards under qemu), watched for health like any farm, and stopped on exit. Tuning
and verification go through the same RPC path as on a real farm.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.devices import DeviceConfig
from rpc.farm import Farm
from rpc.inventory import Board, Health, Inventory, TrackerConfig
from rpc.tracker import free_port


@contextlib.contextmanager
def local_farm(device: DeviceConfig, boards: int = 1, out=None) -> Iterator[Farm]:
    """A tracker plus `boards` local boards of `device` for the duration of the block."""
    emulated = device.is_aarch64 and platform.machine() != "aarch64"
    inventory = Inventory(
        TrackerConfig("127.0.0.1", free_port()), Health(),
        tuple(Board(f"{device.name}-{i + 1}", device, None, emulated, None)
              for i in range(boards)))
    with tempfile.TemporaryDirectory(prefix="pipeline-farm-") as tmp:
        farm = Farm(inventory, Path(tmp), out=out or sys.stderr)
        try:
            farm.up()
            with farm.watching():
                yield farm
        finally:
            farm.down()
