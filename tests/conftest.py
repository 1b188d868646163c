"""Shared real parts: a loopback TVM tracker with an RPC server, tiny models, temp log roots."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def host_farm(host_device):
    """A real tracker on 127.0.0.1 with one RPC server (this machine) under the key 'host'."""
    from pipeline.farm.local import local_farm

    with local_farm(host_device) as farm:
        yield farm.address


@pytest.fixture(scope="session")
def host_device():
    from pipeline.base.devices import load_device

    return load_device("host")


@pytest.fixture(scope="session")
def tiny_model():
    from pipeline.frontend.models import load_model

    return load_model("tiny-cnn")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with throw-away host and user keys (key auth only)."""
    from tests.sshd import running_sshd

    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
