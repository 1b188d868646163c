"""The embedded farm: with no --tracker, the pipeline starts its own on this machine.

A loopback tracker and local boards of the device class (x86 classes natively, aarch64 classes
as emulated boards under qemu, timed by the class's timing model where it has one), watched for
health like any farm, and stopped on exit. Tuning and verification go through the same RPC path
as on a real farm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.base.devices import DeviceConfig, runs_target
from pipeline.base.errors import UserError
from pipeline.farm.inventory import Board, Health, Inventory, TrackerConfig
from pipeline.farm.lifecycle import Farm
from pipeline.farm.tracker import TrackerAddress, free_port

log = logging.getLogger(__name__)


@contextlib.contextmanager
def local_farm(device: DeviceConfig, boards: int = 1,
               modeled: bool | None = None) -> Iterator[Farm]:
    """A tracker plus `boards` local boards of `device` for the duration of the block; emulated
    ones are modeled (`modeled` None: where the class has a timing model)."""
    emulated = device.emulated_here
    if modeled is None:
        modeled = emulated and device.timing_model is not None
    inventory = Inventory(
        TrackerConfig("127.0.0.1", free_port()), Health(),
        tuple(Board(f"{device.name}-{i + 1}", device, None, emulated, None,
                    modeled=modeled and emulated)
              for i in range(boards)))
    with tempfile.TemporaryDirectory(prefix="pipeline-farm-") as tmp:
        farm = Farm(inventory, Path(tmp))
        # Stops the farm if this process is killed outright (see pipeline.farm.watchdog); it
        # leaves by itself when the block ends and the folder is removed.
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "pipeline.farm.watchdog", str(os.getpid()), tmp],
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            farm.up()
            with farm.watching():
                yield farm
        finally:
            farm.down()
            watchdog.kill()
            watchdog.wait()


def runs_here(device: DeviceConfig) -> bool:
    """Whether a local board of `device` can run its code: natively, or under qemu."""
    return device.detected or device.emulated_here or runs_target(device.target)


@contextlib.contextmanager
def farm_for(device: DeviceConfig, tracker: TrackerAddress | None) -> Iterator[TrackerAddress]:
    """The tracker to use: `tracker` as given, or an embedded farm's for the block's duration."""
    if tracker is not None:
        yield tracker
        return
    if not runs_here(device):
        raise UserError(
            f"This machine's CPU cannot run code built for {device.name} ({device.target['mcpu']}"
            f"), so no board of the class can be started here. Give --tracker HOST:PORT of a "
            f"farm with {device.rpc_key} boards, or build for a class this CPU runs (host picks "
            f"one).")
    kind = ("modeled " if device.emulated_here and device.timing_model is not None
            else "emulated " if device.emulated_here else "")
    log.info(f"no --tracker: starting an embedded farm with one {kind}'{device.rpc_key}' board "
             f"on this machine")
    with local_farm(device) as farm:
        yield farm.address
