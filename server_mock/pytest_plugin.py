"""pytest plugin of the mock platform (registered through the ``pytest11`` entry point).

Fixtures:
    clara_platform: a started :class:`~server_mock.MockPlatform` on an ephemeral loopback
        port, stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server_mock._platform import MockPlatform


@pytest.fixture
def clara_platform() -> Iterator[MockPlatform]:
    """A running mock platform on ``127.0.0.1:<ephemeral>``, stopped after the test."""
    platform = MockPlatform()
    platform.start()
    try:
        yield platform
    finally:
        platform.stop()
