"""Figure 2: inputs-ready latency: upstream success to the dependant's ``execute`` starting.

Each repetition makes a two-stage job ``up -> down``. A driver for ``down`` is started and
left waiting: the platform has its ``context_received`` event, the driver has notified
WAITING_FOR_INPUTS, and its WatchStage stream has delivered the first WAITING signal (seen
through the ``clara`` logger's debug record of it; the logger is back at WARNING before the
timing starts). Then the benchmark itself calls CompleteStage for ``up`` with a raw stub.

Measured: from CompleteStage(up) returning to the first line of ``down``'s ``execute``
(``time.perf_counter`` in both places, same process).

Baseline: the same push without a driver: a raw WatchStage stream on a waiting ``down``,
from CompleteStage(up) returning to the client receiving INPUTS_READY.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import clara
from benchmarks._common import Row, complete_request, open_stub, row, stage_ref
from clara.stage_api import stage_service_pb2 as pb
from server_mock import InputRef, MockPlatform, StageSpec

TITLE = "Figure 2 - inputs-ready latency (CompleteStage(up) returns -> execute of down starts)"
FIGURE = "2 inputs-ready"
TARGET_RATIO = 3.0
WAIT = 20.0
SPECS = [StageSpec("up"), StageSpec("down", inputs=(InputRef("/in", "up"),))]


class _WaitingSignalSeen(logging.Handler):
    """Sets ``seen`` when the driver's watcher logs the first WAITING signal it received."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "signal %s: %s" and record.args and record.args[0] == "waiting":
            self.seen.set()


def _driver_sample(platform: MockPlatform, stub: Any) -> tuple[float, bool]:
    """One measured repetition; returns (seconds, whether the stream was seen open)."""
    job_id = platform.create_job(SPECS, name="inputs-ready")
    waiting = threading.Event()
    executed: list[float] = []

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        executed.append(time.perf_counter())
        return True

    def notify(driver: clara.Driver[Any], notification: clara.Notification) -> None:
        if notification.kind is clara.NotificationKind.WAITING_FOR_INPUTS:
            waiting.set()

    driver: clara.Driver[Any] = clara.Driver(
        execute=execute, notify=notify, target=platform.address, job_id=job_id, stage_name="down"
    )
    logger = logging.getLogger("clara")
    hook = _WaitingSignalSeen()
    try:
        logger.addHandler(hook)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            driver.start()
            platform.wait_for_stage(job_id, "down", lambda s: "context_received" in s.events, WAIT)
            if not waiting.wait(WAIT):
                raise RuntimeError("the driver never notified WAITING_FOR_INPUTS")
            stream_seen = hook.seen.wait(2.0)
        finally:
            logger.setLevel(logging.WARNING)
            logger.propagate = True
            logger.removeHandler(hook)
        if not stream_seen:
            time.sleep(0.05)  # fallback: give the stream time to open (reported in a note)
        stub.CompleteStage(complete_request(job_id, "up"), timeout=WAIT)
        released = time.perf_counter()
        result = driver.wait_for_completion(WAIT)
    except BaseException:
        # Never leave a driver waiting for inputs: it would keep the process alive.
        if driver.state is not clara.DriverState.CREATED:
            with contextlib.suppress(Exception):
                platform.cancel_job(job_id, "benchmark failed")
            with contextlib.suppress(Exception):
                driver.wait_for_completion(WAIT)
        raise
    if not result.succeeded or not executed:
        raise RuntimeError(f"the waiting driver did not execute: {result}")
    return executed[0] - released, stream_seen


def _raw_sample(platform: MockPlatform, stub: Any) -> float:
    job_id = platform.create_job(SPECS, name="inputs-ready-raw")
    stream = stub.WatchStage(pb.WatchStageRequest(stage=stage_ref(job_id, "down")), timeout=WAIT)
    try:
        first = next(stream)
        if first.signal != pb.STAGE_SIGNAL_WAITING:
            raise RuntimeError(f"expected WAITING first, got {first}")
        stub.CompleteStage(complete_request(job_id, "up"), timeout=WAIT)
        released = time.perf_counter()
        ready = next(stream)
        received = time.perf_counter()
        if ready.signal != pb.STAGE_SIGNAL_INPUTS_READY:
            raise RuntimeError(f"expected INPUTS_READY, got {ready}")
    finally:
        stream.cancel()
    stub.CompleteStage(complete_request(job_id, "down"), timeout=WAIT)
    return received - released


def run(quick: bool) -> list[Row]:
    repetitions = 30 if quick else 200
    warmup = 3
    measured: list[float] = []
    baseline: list[float] = []
    fallbacks = 0
    with MockPlatform() as platform:
        channel, stub = open_stub(platform.address)
        try:
            for rep in range(repetitions + warmup):
                if rep % 2:
                    base = _raw_sample(platform, stub)
                    sample, seen = _driver_sample(platform, stub)
                else:
                    sample, seen = _driver_sample(platform, stub)
                    base = _raw_sample(platform, stub)
                if rep >= warmup:
                    measured.append(sample * 1e3)
                    baseline.append(base * 1e3)
                    fallbacks += not seen
        finally:
            channel.close()
    note = (
        f"{fallbacks} repetition(s) did not see the driver's first WAITING signal and waited "
        "50 ms instead"
        if fallbacks
        else ""
    )
    return [
        row(
            FIGURE,
            "driver: inputs ready -> execute",
            "ms",
            measured,
            baseline="raw WatchStage push",
            base_samples=baseline,
            target=f"median <= {TARGET_RATIO:g}x",
            check=lambda r: r.ratio <= TARGET_RATIO,
            note=note,
        )
    ]
