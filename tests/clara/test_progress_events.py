"""Progress events: queued, sent in batches while a step runs, the rest with the report.

Each test records every ReportStageEvents call the mock platform receives (the servicer is
patched before the platform starts) and checks what the platform kept for the stage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

import clara
from clara.stage_api import stage_service_pb2 as pb
from server_mock import MockPlatform, StageSpec
from server_mock._stage_service import StageService

WAIT = 20.0
LIFE_CYCLE = [
    "context_received",
    "prepare_started",
    "prepare_finished",
    "inputs_ready",
    "execute_started",
    "execute_finished",
    "cleanup_started",
    "cleanup_finished",
]


class Batches:
    """What the platform's ReportStageEvents received, and how it answers."""

    def __init__(self) -> None:
        self.kinds: list[list[str]] = []
        self.arrived = threading.Event()
        self.refuse: list[grpc.StatusCode] = []  # answer the next calls with these codes

    def record(self, request: pb.ReportStageEventsRequest) -> grpc.StatusCode | None:
        self.kinds.append(
            [
                pb.StageEventKind.Name(e.kind).removeprefix("STAGE_EVENT_KIND_").lower()
                for e in request.events
            ]
        )
        self.arrived.set()
        return self.refuse.pop(0) if self.refuse else None


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Batches:
    seen = Batches()
    original = StageService.ReportStageEvents

    async def recording(
        self: StageService,
        request: pb.ReportStageEventsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.ReportStageEventsResponse:
        code = seen.record(request)
        if code is not None:
            await context.abort(code, "refused by the test")
        return await original(self, request, context)

    monkeypatch.setattr(StageService, "ReportStageEvents", recording)
    return seen


@pytest.fixture
def platform(batches: Batches) -> Iterator[MockPlatform]:
    with MockPlatform() as running:
        yield running


def run_stage(
    platform: MockPlatform,
    drivers: list[clara.Driver[Any]],
    execute: Callable[[clara.Driver[Any], clara.Payload], bool],
    linger: timedelta = timedelta(milliseconds=50),
) -> list[str]:
    """Run a one-stage job with no-op prepare and cleanup; return the platform's events."""
    job_id = platform.create_job([StageSpec("only")], name="events")
    driver: clara.Driver[Any] = clara.Driver(
        prepare=lambda d: True,
        execute=execute,
        cleanup=lambda d: True,
        target=platform.address,
        job_id=job_id,
        stage_name="only",
        timeouts=clara.DriverTimeouts(progress_linger=linger),
    )
    drivers.append(driver)
    driver.start()
    result = driver.wait_for_completion(WAIT)
    assert result.succeeded and result.reported, result
    return list(platform.job(job_id).stages["only"].events)


def test_a_quick_life_cycle_reports_every_event_with_the_outcome_and_no_other_call(
    platform: MockPlatform, batches: Batches, drivers: list[clara.Driver[Any]]
) -> None:
    states: list[clara.DriverState] = []

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        states.append(driver.state)
        return True

    # Every step ends well within the linger, so nothing is sent before CompleteStage.
    events = run_stage(platform, drivers, execute, linger=timedelta(seconds=WAIT))
    assert events == LIFE_CYCLE
    assert batches.kinds == []
    assert states == [clara.DriverState.EXECUTING]


def test_a_step_longer_than_the_linger_shows_on_the_platform_while_it_runs(
    platform: MockPlatform, batches: Batches, drivers: list[clara.Driver[Any]]
) -> None:
    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        # Returns only once the platform has recorded that execute started.
        platform.wait_for_stage(
            driver.job_id, driver.stage_name, lambda s: "execute_started" in s.events, WAIT
        )
        return True

    events = run_stage(platform, drivers, execute, linger=timedelta(milliseconds=10))
    assert events == LIFE_CYCLE  # each once, in order, whichever call carried it
    sent = [kind for batch in batches.kinds for kind in batch]
    assert "execute_started" in sent
    assert len(sent) == len(set(sent))


def test_a_platform_without_batches_gets_the_events_with_the_outcome(
    platform: MockPlatform, batches: Batches, drivers: list[clara.Driver[Any]]
) -> None:
    batches.refuse = [grpc.StatusCode.UNIMPLEMENTED]

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        return batches.arrived.wait(WAIT)  # the first batch was tried (and refused)

    events = run_stage(platform, drivers, execute, linger=timedelta(milliseconds=10))
    assert events == LIFE_CYCLE
    assert len(batches.kinds) == 1  # not tried again once the platform said UNIMPLEMENTED


def test_a_batch_that_failed_is_sent_again_and_recorded_once(
    platform: MockPlatform, batches: Batches, drivers: list[clara.Driver[Any]]
) -> None:
    batches.refuse = [grpc.StatusCode.UNAVAILABLE]

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        return batches.arrived.wait(WAIT)

    events = run_stage(platform, drivers, execute, linger=timedelta(milliseconds=10))
    assert events == LIFE_CYCLE
    refused = batches.kinds[0]
    assert refused  # those events went again, later, and were recorded once
