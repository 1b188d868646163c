"""Where the project's files are, in one place.

Committed data sits beside the package in the project: device classes, tuning logs, the scripts
pushed to boards and the default inventory. State that a later command must find again (the
emulated boards' root filesystem, a farm's PIDs, tuning work folders) goes under the project's
`build/`; artifacts go under `artifacts/` of the working directory, as the README says.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEVICE_CONFIGS = PROJECT_ROOT / "device_configs"
TUNING_LOGS = PROJECT_ROOT / "tuning_logs"
BOARD_SCRIPTS = PROJECT_ROOT / "rpc"  # run on boards with their own Python: never imported here
DEFAULT_INVENTORY = BOARD_SCRIPTS / "farm.yaml"
NIGHTLY_MATRIX = PROJECT_ROOT / "pipeline" / "nightly.yaml"
BUILD_ROOT = PROJECT_ROOT / "build"
ARTIFACTS = Path("artifacts")
