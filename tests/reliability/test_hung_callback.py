"""5. A callback that never returns: the wait ends at the deadline, and the process can exit."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from _faults import WAIT, OperatorProcess, Recorder, launch_operator

import clara
from server_mock import MockPlatform, StageSpec, StageState

STAGE_TIMEOUT = 1.0
GRACE = 1.0
SLACK = 3.0  # process start-up, scheduling on a loaded CI machine


def test_wait_for_completion_is_not_held_past_the_deadline_by_hung_callbacks(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    release = threading.Event()  # set at the end, so the abandoned threads finish
    job_id = clara_platform.create_job(
        [StageSpec("stuck", timeout=timedelta(seconds=STAGE_TIMEOUT))]
    )
    callback_threads: list[threading.Thread] = []
    returned: list[threading.Event] = []

    def hang(driver: clara.Driver[Any], *args: Any) -> bool:
        callback_threads.append(threading.current_thread())
        done = threading.Event()
        returned.append(done)
        try:
            release.wait(60)
            return True
        finally:
            done.set()

    driver = clara.Driver(
        execute=hang,
        cleanup=hang,  # cleanup hangs too: it is bounded by the grace period
        notify=recorder.notify,
        target=clara_platform.address,
        job_id=job_id,
        stage_name="stuck",
        timeouts=clara.DriverTimeouts(grace=timedelta(seconds=GRACE)),
    )
    drivers.append(driver)
    try:
        started = time.monotonic()
        driver.start()
        result = driver.wait_for_completion(STAGE_TIMEOUT + 2 * GRACE + SLACK)
        waited = time.monotonic() - started
        assert result.outcome is clara.StageOutcome.TIMED_OUT
        assert result.message.startswith("execute did not finish within 0:00:01")
        assert "cleanup also failed: cleanup did not return before its deadline" in result.message
        assert result.reported
        assert waited < STAGE_TIMEOUT + 2 * GRACE + SLACK
        # The abandoned callbacks run on daemon threads: they cannot keep a process alive.
        assert len(callback_threads) == 2
        assert all(t.daemon and t.is_alive() for t in callback_threads)
        stage = clara_platform.job(job_id).stages["stuck"]
        assert stage.state is StageState.TIMED_OUT
        assert stage.reports_applied == 1
    finally:
        release.set()
    # The callbacks return once released (their threads then park in the thread cache).
    assert all(done.wait(WAIT) for done in returned)


def test_operator_process_with_an_execute_that_never_returns_exits_after_the_timeout(
    clara_platform: MockPlatform, operators: list[OperatorProcess]
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("stuck", timeout=timedelta(seconds=STAGE_TIMEOUT))]
    )
    operator = launch_operator(
        operators,
        clara_platform,
        job_id,
        "stuck",
        RELIABILITY_MODE="hang",
        RELIABILITY_GRACE=str(GRACE),
    )
    operator.wait_event("execute")
    executing = time.monotonic()
    # Bounded: the stage timeout, the grace period, and slack for the report and interpreter exit.
    code = operator.process.wait(STAGE_TIMEOUT + GRACE + SLACK)
    elapsed = time.monotonic() - executing

    assert code == 1, operator.describe()
    assert elapsed < STAGE_TIMEOUT + GRACE + SLACK
    result = operator.wait_event("result")
    assert result["outcome"] == "timed_out" and result["reported"], operator.describe()
    assert "timed_out" in operator.kinds() and "cleanup" in operator.kinds()
    stage = clara_platform.job(job_id).stages["stuck"]
    assert stage.state is StageState.TIMED_OUT
    assert stage.reports_applied == 1
