"""3. The outcome report fails transiently: one retry loop, one report id, applied once."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from _faults import WAIT, Recorder, StageFaults, faulty_stage_server

import clara
from server_mock import MockPlatform, StageSpec, StageState

FAST_RETRY = clara.RetryConfig(initial=0.01, maximum=0.05)


def report_retries(recorder: Recorder) -> list[clara.Notification]:
    return [
        n
        for n in recorder.of(clara.NotificationKind.CONNECT_RETRY)
        if n.message.startswith("CompleteStage")
    ]


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(["unavailable", "unavailable"], id="not-reached-twice"),
        pytest.param(["lose"], id="applied-but-answer-lost"),
        pytest.param(["lose", "unavailable", "lose"], id="mixed"),
    ],
)
def test_report_is_retried_with_the_same_id_and_applied_once(
    clara_platform: MockPlatform,
    recorder: Recorder,
    drivers: list[clara.Driver[Any]],
    plan: list[str],
) -> None:
    faults = StageFaults("CompleteStage", plan)
    job_id = clara_platform.create_job([StageSpec("only")])
    with faulty_stage_server(clara_platform, faults) as address:
        driver = clara.Driver(
            execute=lambda d, p: True,
            notify=recorder.notify,
            target=address,
            job_id=job_id,
            stage_name="only",
            retry=FAST_RETRY,
        )
        drivers.append(driver)
        driver.start()
        result = driver.wait_for_completion(WAIT)

    assert result.succeeded and result.reported
    # Every attempt carried the same report id ...
    assert len(faults.requests) == len(plan) + 1
    assert len({r.report_id for r in faults.requests}) == 1
    # ... and the platform applied it exactly once, however many answers were lost.
    stage = clara_platform.job(job_id).stages["only"]
    assert stage.state is StageState.SUCCEEDED
    assert stage.reports_applied == 1
    # One retry mechanism: the server saw exactly the attempts the driver made (a gRPC retry
    # policy stacked under the driver's loop would show up here as extra requests).
    assert len(report_retries(recorder)) == len(plan)
    reported = recorder.of(clara.NotificationKind.OUTCOME_REPORTED)
    assert [n.message for n in reported] == ["succeeded -> succeeded"]


def test_a_report_attempt_past_its_rpc_timeout_is_retried_and_applied_once(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    # The platform applies the first report but answers after the client's deadline.
    faults = StageFaults("CompleteStage", ["slow"], delay=1.5)
    job_id = clara_platform.create_job([StageSpec("only")])
    with faulty_stage_server(clara_platform, faults) as address:
        driver = clara.Driver(
            execute=lambda d, p: False,
            notify=recorder.notify,
            target=address,
            job_id=job_id,
            stage_name="only",
            retry=FAST_RETRY,
            timeouts=clara.DriverTimeouts(rpc=timedelta(seconds=0.3)),
        )
        drivers.append(driver)
        driver.start()
        result = driver.wait_for_completion(WAIT)

    assert result.outcome is clara.StageOutcome.FAILED and result.reported
    assert len(faults.requests) == 2
    assert len({r.report_id for r in faults.requests}) == 1
    (retry,) = report_retries(recorder)
    assert "DEADLINE_EXCEEDED" in retry.message
    stage = clara_platform.job(job_id).stages["only"]
    assert stage.state is StageState.FAILED
    assert stage.reports_applied == 1


def test_a_platform_that_never_takes_the_report_is_given_up_at_the_report_deadline(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    faults = StageFaults("CompleteStage", ["unavailable"] * 10_000)
    job_id = clara_platform.create_job([StageSpec("only")])
    with faulty_stage_server(clara_platform, faults) as address:
        driver = clara.Driver(
            execute=lambda d, p: True,
            notify=recorder.notify,
            target=address,
            job_id=job_id,
            stage_name="only",
            retry=FAST_RETRY,
            timeouts=clara.DriverTimeouts(report=timedelta(seconds=1)),
        )
        drivers.append(driver)
        driver.start()
        started = time.monotonic()
        result = driver.wait_for_completion(WAIT)
        waited = time.monotonic() - started

    assert result.outcome is clara.StageOutcome.SUCCEEDED  # what happened locally ...
    assert not result.reported  # ... but nobody acknowledged it
    # The last error is the platform's UNAVAILABLE, or the deadline of the last attempt: it
    # gets only what is left of the budget, and connects afresh (the channel of a failed
    # attempt is retired), so it may run out while connecting.
    assert isinstance(result.error, clara.PlatformUnavailableError | clara.DeadlineExceededError)
    assert waited < 1 + 5
    assert len(faults.requests) == len(report_retries(recorder)) + 1 > 3
    assert clara_platform.job(job_id).stages["only"].reports_applied == 0
