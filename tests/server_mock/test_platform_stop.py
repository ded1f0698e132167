"""Stopping a MockPlatform leaves nothing pending on its event loop."""

from __future__ import annotations

import asyncio
import gc

import pytest

from server_mock import MockPlatform


def test_stopping_cancels_the_tasks_still_pending_on_its_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform = MockPlatform()
    platform.start()
    parked: list[asyncio.Task[bool]] = []

    async def park() -> None:
        # A task nobody will finish: a waiter the way a stream handler or a runner waits.
        parked.append(asyncio.ensure_future(asyncio.Event().wait()))

    try:
        platform.call_async(park)
    finally:
        platform.stop()
    assert parked[0].cancelled()
    gc.collect()
    assert "Task was destroyed but it is pending" not in caplog.text
