"""9. A connection that silently stops carrying bytes (no reset) loses no report and no signal.

Drivers reach the platform through a real TCP proxy (``_proxy.TcpProxy``), which stalls every
open connection at the chosen moment: nothing is forwarded any more in either direction, and
both sockets stay open, so no peer sees an error. New connections are forwarded as usual. The
drivers of this process share one channel, so one stalled connection is every driver's.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from _faults import WAIT, Recorder
from _proxy import TcpProxy

import clara
from clara._channels import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from server_mock import InputRef, MockPlatform, StageSpec, StageState

SHARED = 12  # drivers on the process's shared channel
GIVEN = 4  # drivers on one channel the test gives them
# A stall is noticed by keepalive within this (a ping, then its timeout), plus a margin for
# a loaded machine; the report budget (60 s) is far above it.
NOTICED_WITHIN = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 7
FAST_RETRY = clara.RetryConfig(initial=0.01, maximum=0.1)


@pytest.fixture
def proxy(clara_platform: MockPlatform) -> Iterator[TcpProxy]:
    forwarding = TcpProxy(clara_platform.address)
    try:
        yield forwarding
    finally:
        forwarding.close()


class Gate:
    """Holds executes until the test opens it; counts the executes that are waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self.waiting = 0

    def execute(self, driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._open, WAIT)

    def wait_for(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.waiting >= count, WAIT), self.waiting

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


def wait_for_events(platform: MockPlatform, job_id: uuid.UUID, kind: str) -> None:
    """Until every stage recorded ``kind``: no progress batch is in flight any more."""
    for name in platform.job(job_id).stages:
        platform.wait_for_stage(job_id, name, lambda s: kind in s.events, WAIT)


def start_drivers(
    job_id: uuid.UUID,
    names: list[str],
    target: str,
    drivers: list[clara.Driver[Any]],
    gate: Gate,
    **kwargs: Any,
) -> list[clara.Driver[Any]]:
    started = []
    for name in names:
        driver: clara.Driver[Any] = clara.Driver(
            execute=gate.execute,
            target=target,
            job_id=job_id,
            stage_name=name,
            retry=FAST_RETRY,
            handle_sigterm=False,
            **kwargs,
        )
        drivers.append(driver)
        started.append(driver)
        driver.start()
    return started


def test_reports_on_a_stalled_shared_connection_all_land_well_within_the_budget(
    clara_platform: MockPlatform, proxy: TcpProxy, drivers: list[clara.Driver[Any]]
) -> None:
    names = [f"s{i}" for i in range(SHARED + GIVEN)]
    job_id = clara_platform.create_job([StageSpec(name) for name in names])
    gate = Gate()
    given = grpc.insecure_channel(proxy.address, options=clara.CHANNEL_OPTIONS)
    try:
        start_drivers(job_id, names[:SHARED], proxy.address, drivers, gate)
        start_drivers(job_id, names[SHARED:], proxy.address, drivers, gate, channel=given)
        gate.wait_for(SHARED + GIVEN)
        wait_for_events(clara_platform, job_id, "execute_started")
        # One connection for the shared channel, one for the given one: stall both, just
        # before every driver reports on them.
        assert proxy.accepted == 2
        assert proxy.stall() == 2
        stalled_at = time.monotonic()
        gate.open()
        results = [driver.wait_for_completion(WAIT * 2) for driver in drivers]
        took = time.monotonic() - stalled_at

        assert all(r.succeeded and r.reported for r in results), results
        job = clara_platform.job(job_id)
        assert {s.state for s in job.stages.values()} == {StageState.SUCCEEDED}
        assert {s.reports_applied for s in job.stages.values()} == {1}
        assert took < NOTICED_WITHIN, took
        assert proxy.accepted >= 3  # the reports went over new connections
        # The given channel is the application's: the driver never closed it, and gRPC
        # reconnected it once keepalive had closed the dead connection.
        grpc.channel_ready_future(given).result(timeout=WAIT)
    finally:
        gate.open()
        given.close()


def test_an_attempt_past_its_deadline_retires_the_channel_and_the_retry_reconnects(
    clara_platform: MockPlatform, proxy: TcpProxy, drivers: list[clara.Driver[Any]]
) -> None:
    names = [f"s{i}" for i in range(8)]
    job_id = clara_platform.create_job([StageSpec(name) for name in names])
    gate = Gate()
    rpc = timedelta(seconds=0.5)
    try:
        started = start_drivers(
            job_id, names, proxy.address, drivers, gate, timeouts=clara.DriverTimeouts(rpc=rpc)
        )
        gate.wait_for(len(names))
        wait_for_events(clara_platform, job_id, "execute_started")
        assert proxy.stall() == 1
        stalled_at = time.monotonic()
        gate.open()
        results = [driver.wait_for_completion(WAIT) for driver in started]
        took = time.monotonic() - stalled_at
    finally:
        gate.open()

    assert all(r.succeeded and r.reported for r in results), results
    # Keepalive cannot have closed the stalled connection this soon (a ping must first go
    # unanswered for KEEPALIVE_TIMEOUT_MS): the first attempt's deadline retired the channel,
    # and the retry went over a new connection.
    assert took < KEEPALIVE_TIMEOUT_MS / 1000, took
    assert proxy.accepted == 2
    stages = clara_platform.job(job_id).stages.values()
    assert {s.reports_applied for s in stages} == {1}


def test_a_stage_waiting_on_a_stalled_stream_notices_and_hears_that_its_inputs_are_ready(
    clara_platform: MockPlatform,
    proxy: TcpProxy,
    recorder: Recorder,
    drivers: list[clara.Driver[Any]],
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("up"), StageSpec("down", inputs=(InputRef("/in", "up"),))]
    )
    down: clara.Driver[Any] = clara.Driver(
        execute=lambda d, p: True,
        notify=recorder.notify,
        target=proxy.address,
        job_id=job_id,
        stage_name="down",
        retry=FAST_RETRY,
        handle_sigterm=False,
    )
    drivers.append(down)
    down.start()
    recorder.wait_count(clara.NotificationKind.WAITING_FOR_INPUTS, 1, WAIT)
    assert proxy.stall() == 1
    stalled_at = time.monotonic()
    # "up" succeeds over its own, direct connection: "down" is ready while its stream is dead.
    up: clara.Driver[Any] = clara.Driver(
        execute=lambda d, p: True,
        target=clara_platform.address,
        job_id=job_id,
        stage_name="up",
        handle_sigterm=False,
    )
    drivers.append(up)
    up.start()
    assert up.wait_for_completion(WAIT).reported

    result = down.wait_for_completion(WAIT * 2)
    took = time.monotonic() - stalled_at
    assert result.succeeded and result.reported, result
    assert took < NOTICED_WITHIN, took
    kinds = recorder.kinds()
    assert clara.NotificationKind.STREAM_RECONNECTING in kinds
    assert kinds.index(clara.NotificationKind.STREAM_RECONNECTING) < kinds.index(
        clara.NotificationKind.INPUTS_READY
    )
    assert clara_platform.job(job_id).stages["down"].state is StageState.SUCCEEDED
