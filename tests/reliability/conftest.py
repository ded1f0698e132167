"""Fixtures of the reliability tests: every server, process and thread is stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults import (
    ControlServer,
    HeldOpenUpload,
    OperatorProcess,
    Recorder,
    ServerProcess,
    kill_pids,
)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def operators() -> Iterator[list[OperatorProcess]]:
    """Operator processes a test launches; killed (if still alive) and reaped at teardown."""
    launched: list[OperatorProcess] = []
    yield launched
    for operator in launched:
        operator.close()


@pytest.fixture
def control() -> Iterator[ControlServer]:
    """A control channel; the operators that said hello on it are killed at teardown."""
    server = ControlServer()
    try:
        yield server
    finally:
        kill_pids(server.pids())
        server.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    """A ``clara-mock serve --state`` process (not started yet); stopped at teardown."""
    server = ServerProcess(tmp_path / "state.db", tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def held() -> Iterator[list[HeldOpenUpload]]:
    """Uploads a test holds open; released (and their channels closed) at teardown."""
    started: list[HeldOpenUpload] = []
    yield started
    for upload in started:
        upload.release()
