"""7. Every channel, stream and thread is released on every path: 500 life-cycles, no growth."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from _faults import WAIT

import clara
from clara._channels import open_channel_count
from clara._threads import running_tasks
from server_mock import InputRef, MockPlatform, StageSpec

LIFECYCLES = 500
WARM_UP = 40
THREAD_SLACK = 2
FD_SLACK = 6


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_channels() -> int:
    """gRPC channels still referenced (channels to one target share a connection, so a leaked
    channel need not show up as a file descriptor)."""
    gc.collect()
    return sum(isinstance(o, grpc.Channel) for o in gc.get_objects())


class Paths:
    """One cheap life-cycle per path: success, failures, cancellations, timeouts, no platform."""

    def __init__(self, platform: MockPlatform, closed_address: str) -> None:
        self.platform = platform
        self.closed_address = closed_address
        self.release = threading.Event()  # lets blocked callbacks return after their stage ended

    def driver(self, job_id: uuid.UUID, stage: str, **kwargs: Any) -> clara.Driver[Any]:
        kwargs.setdefault("target", self.platform.address)
        kwargs.setdefault("notify", lambda d, n: None)
        kwargs.setdefault("cleanup", lambda d: True)
        return clara.Driver(job_id=job_id, stage_name=stage, handle_sigterm=False, **kwargs)

    def job(self, *specs: StageSpec) -> uuid.UUID:
        return self.platform.create_job(specs or [StageSpec("s")])

    def succeed(self) -> clara.Driver[Any]:
        return self.driver(self.job(), "s", prepare=lambda d: True, execute=lambda d, p: True)

    def execute_fails(self) -> clara.Driver[Any]:
        return self.driver(self.job(), "s", execute=lambda d, p: False)

    def prepare_raises(self) -> clara.Driver[Any]:
        def prepare(driver: clara.Driver[Any]) -> bool:
            raise RuntimeError("injected")

        return self.driver(self.job(), "s", prepare=prepare, execute=lambda d, p: True)

    def cancelled_while_waiting(self) -> clara.Driver[Any]:
        job_id = self.job(StageSpec("up"), StageSpec("s", inputs=(InputRef("/in", "up"),)))
        self.platform.cancel_job(job_id)
        return self.driver(job_id, "s", execute=lambda d, p: True)

    def cancelled_during_execute(self) -> clara.Driver[Any]:
        job_id = self.job()

        def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
            self.platform.cancel_job(job_id)
            return self.release.wait(WAIT)

        return self.driver(job_id, "s", execute=execute)

    def execute_times_out(self) -> clara.Driver[Any]:
        job_id = self.job(StageSpec("s", timeout=timedelta(milliseconds=20)))
        return self.driver(job_id, "s", execute=lambda d, p: self.release.wait(WAIT))

    def unknown_job(self) -> clara.Driver[Any]:
        return self.driver(uuid.uuid4(), "ghost", execute=lambda d, p: True)

    def no_platform(self) -> clara.Driver[Any]:
        return self.driver(
            uuid.uuid4(),
            "s",
            target=self.closed_address,
            timeouts=clara.DriverTimeouts(connect=timedelta(milliseconds=30)),
            retry=clara.RetryConfig(initial=0.01, maximum=0.01),
        )

    def standalone(self) -> clara.Driver[Any]:
        return self.driver(
            uuid.uuid4(), "s", standalone=True, target=None, execute=lambda d, p: True
        )

    def all(self) -> list[Callable[[], clara.Driver[Any]]]:
        return [
            self.succeed,
            self.execute_fails,
            self.prepare_raises,
            self.cancelled_while_waiting,
            self.cancelled_during_execute,
            self.execute_times_out,
            self.unknown_job,
            self.no_platform,
            self.standalone,
        ]


# What outlives a life-cycle on purpose, in bounded numbers (the thread count below checks):
# the timer that closes an unused shared channel, and parked threads of the driver's thread
# cache, which the next driver reuses.
LINGERING_JOBS = ("clara-channel-closer",)


def settle() -> None:
    """Join the drivers' jobs (threads) that are still ending (bounded): they must all end."""
    deadline = time.monotonic() + 10
    for job in running_tasks():
        if job.name not in LINGERING_JOBS:
            job.join(max(deadline - time.monotonic(), 0))


@pytest.fixture
def quiet_driver_logs() -> Iterator[None]:
    """Keep log records (whose tracebacks hold frames, links and channels) out of pytest's
    capture, which retains them until the test ends and would look like a leak."""
    logger = logging.getLogger("clara")
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


@pytest.mark.usefixtures("quiet_driver_logs")
def test_500_lifecycles_leak_no_threads_and_no_file_descriptors(
    clara_platform: MockPlatform,
) -> None:
    with socket.socket() as placeholder:  # bound, not listening: connections are refused
        placeholder.bind(("127.0.0.1", 0))
        paths = Paths(clara_platform, f"127.0.0.1:{placeholder.getsockname()[1]}")
        kinds = paths.all()
        outcomes: dict[str, set[str]] = {}

        def run(index: int) -> None:
            make = kinds[index % len(kinds)]
            driver = make()
            driver.start()
            result = driver.wait_for_completion(WAIT)
            paths.release.set()  # let a blocked callback finish ...
            paths.release = threading.Event()  # ... and block the next one again
            outcomes.setdefault(make.__name__, set()).add(result.outcome.value)

        for index in range(WARM_UP):
            run(index)
        settle()
        threads_before, fds_before = threading.active_count(), open_fds()
        channels_before = live_channels()

        for index in range(WARM_UP, LIFECYCLES):
            run(index)
        settle()
        threads_after, fds_after = threading.active_count(), open_fds()
        channels_after = live_channels()

    assert threads_after <= threads_before + THREAD_SLACK, [t.name for t in threading.enumerate()]
    assert fds_after <= fds_before + FD_SLACK, sorted(os.listdir("/proc/self/fd"))
    assert channels_after <= channels_before
    # Drivers share one channel per target; the unreachable target's channel was discarded.
    assert open_channel_count() <= 1
    # Every path was really taken.
    assert outcomes == {
        "succeed": {"succeeded"},
        "execute_fails": {"failed"},
        "prepare_raises": {"failed"},
        "cancelled_while_waiting": {"cancelled"},
        "cancelled_during_execute": {"cancelled"},
        "execute_times_out": {"timed_out"},
        "unknown_job": {"failed"},
        "no_platform": {"failed"},
        "standalone": {"succeeded"},
    }
