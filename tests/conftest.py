"""Shared test fixtures. The mock platform fixture `clara_platform` comes from the plugin."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import clara

DRIVER_TEARDOWN_WAIT = 60.0


@pytest.fixture(autouse=True)
def _clara_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Keep the driver's and the mock's logs in every failure report."""
    caplog.set_level(logging.DEBUG, logger="clara")
    caplog.set_level(logging.INFO, logger="server_mock")


@pytest.fixture
def drivers() -> Iterator[list[clara.Driver[Any]]]:
    """Drivers a test starts: each is waited for at teardown, so none outlives its test."""
    started: list[clara.Driver[Any]] = []
    yield started
    for driver in started:
        if driver.state is not clara.DriverState.CREATED:
            driver.wait_for_completion(DRIVER_TEARDOWN_WAIT)
