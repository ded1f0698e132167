"""Fixtures of the reliability tests: every server, process and thread is stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _faults import ControlServer, OperatorProcess, Recorder, ServerProcess, kill_pids

import clara


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def drivers() -> Iterator[list[clara.Driver[Any]]]:
    """Drivers a test starts: each is waited for at teardown, so none outlives its test."""
    started: list[clara.Driver[Any]] = []
    yield started
    for driver in started:
        if driver.state is not clara.DriverState.CREATED:
            driver.wait_for_completion(60)


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
