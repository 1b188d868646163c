"""Deploy an artifact to a farm board over SSH,
check its hashes there against the manifest, and run a smoke inference on the board.

The smoke input is the model's sample input when the model can be loaded here (then the
board's output is compared with the framework's), otherwise seeded noise of the manifest's
input shape (then only the output's shape and finiteness are checked)."""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.artifact.manifest import Manifest, read_intact
from pipeline.base.errors import UserError
from pipeline.base.paths import BOARD_SCRIPTS
from pipeline.compile.host import compile_for_host
from pipeline.farm import ssh
from pipeline.farm.inventory import Board
from pipeline.frontend.importer import import_model
from pipeline.job.provenance import recorded_model
from pipeline.job.rebuild_job import requantize_artifact

log = logging.getLogger(__name__)
SMOKE_SCRIPT = BOARD_SCRIPTS / "board_smoke.py"


@dataclass(frozen=True)
class DeployResult:
    board: str
    remote_dir: str
    files_checked: int
    output_shape: tuple[int, ...]
    max_abs_error: float | None  # None when the model is not available here to compare with
    board_ms_median: float
    emulated: bool


def deploy(artifact: Path, board: Board, accept_new_host_key: bool = False) -> DeployResult:
    manifest = read_intact(artifact)
    if board.ssh is None:
        raise UserError(f"Board '{board.name}' has no ssh section: deploy pushes over SSH.")
    if board.device.name != manifest.device.name:
        raise UserError(f"{artifact} is built for '{manifest.device.name}' and board "
                        f"'{board.name}' is a '{board.device.name}': pick a board of that class.")
    # Named after the artifact's key, not the local folder's name: `deploy .` must not make the
    # clean-up below remove a whole class's deployments.
    remote_dir = str(manifest.key.under(PurePosixPath(board.ssh.workdir) / "artifacts"))
    x, reference = _smoke_input(artifact, manifest)
    with ssh.session(board.ssh, accept_new_host_key) as remote:
        log.info(f"pushing {artifact} to {board.name}:{remote_dir}")
        remote.check(f"rm -rf {shlex.quote(remote_dir)}", "clearing the old copy")
        remote.push(artifact, remote_dir)
        remote_hashes = ssh.sha256_remote(remote, sorted(manifest.files), remote_dir)
        wrong = [p for p, digest in manifest.files.items() if remote_hashes.get(p) != digest]
        if wrong:
            raise UserError(f"On {board.name}, {', '.join(wrong)} differ from the manifest after "
                            f"the copy (disk full or a failing card?); nothing was run.")
        log.info(f"  {len(manifest.files)} files match the manifest's sha256 on the board")
        with tempfile.TemporaryDirectory(prefix="pipeline-deploy-") as tmp:
            np.save(Path(tmp) / "input.npy", x)
            remote.push(Path(tmp) / "input.npy", f"{remote_dir}/smoke-input.npy")
            remote.push(SMOKE_SCRIPT, f"{remote_dir}/{SMOKE_SCRIPT.name}")
            line = remote.check(
                f"cd {shlex.quote(remote_dir)} && {shlex.quote(board.ssh.python)} "
                f"{SMOKE_SCRIPT.name} lib.so smoke-input.npy smoke-output.npy",
                "the smoke inference", timeout_s=600).strip().splitlines()[-1]
            remote.fetch(f"{remote_dir}/smoke-output.npy", Path(tmp) / "output.npy")
            y = np.load(Path(tmp) / "output.npy")
    report = json.loads(line)
    expected = tuple(manifest.model.output.shape)
    if tuple(y.shape) != expected or not report["finite"]:
        raise UserError(f"The smoke inference on {board.name} gave shape {tuple(y.shape)} "
                        f"(expected {expected}), finite={report['finite']}: the artifact is "
                        f"broken on this board.")
    error = None
    if reference is not None:
        error = float(np.max(np.abs(y.astype("float64") - reference.astype("float64"))))
        allowed = manifest.variant.tolerance(reference)
        if not error <= allowed:
            raise UserError(f"On {board.name} the output differs from the reference by "
                            f"{error:.3g} (tolerance {allowed:.3g}).")
    return DeployResult(board.name, remote_dir, len(manifest.files), tuple(y.shape), error,
                        float(report["ms_median"]), board.emulated)


def _smoke_input(artifact: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray | None]:
    """An input and what the board must answer: the framework's output for fp32, the same
    quantized model compiled for this machine for int8/fp16 (as verification at build time)."""
    shape = tuple(manifest.model.input.shape)
    try:
        model = recorded_model(manifest)
    except UserError:
        model = None
    if model is None or model.sha256 != manifest.model.sha256:  # not the model it was built from
        return np.random.default_rng(0).standard_normal(shape).astype("float32"), None
    x = model.sample_input()
    if manifest.quantization is None:
        return x, model.reference_output(x)
    quantized = requantize_artifact(artifact, manifest, import_model(model).mod)
    return x, compile_for_host(quantized)(x)[0]
