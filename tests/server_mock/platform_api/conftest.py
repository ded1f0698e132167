"""Fixtures of the Platform API tests: a started mock platform and stubs for its services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _api import Api, connect

from server_mock import MockPlatform


@pytest.fixture
def platform(clara_platform: MockPlatform) -> MockPlatform:
    return clara_platform


@pytest.fixture
def api(platform: MockPlatform) -> Iterator[Api]:
    with connect(platform) as stubs:
        yield stubs
