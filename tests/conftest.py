"""Shared test fixtures. The mock platform fixture `clara_platform` comes from the plugin."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _clara_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Keep the driver's and the mock's logs in every failure report."""
    caplog.set_level(logging.DEBUG, logger="clara")
    caplog.set_level(logging.INFO, logger="server_mock")
