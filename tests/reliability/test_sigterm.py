"""6. SIGTERM to an operator process: cancelled, cleaned up, reported, exited, in the grace."""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from typing import Any

from _faults import WAIT, OperatorProcess, launch_operator

import clara
from server_mock import InputRef, MockPlatform, StageSpec, StageState

GRACE = 2.0
SLACK = 3.0


def test_sigterm_during_execute_cancels_cleans_up_reports_and_exits(
    clara_platform: MockPlatform, operators: list[OperatorProcess]
) -> None:
    job_id = clara_platform.create_job([StageSpec("busy", timeout=timedelta(seconds=600))])
    operator = launch_operator(
        operators,
        clara_platform,
        job_id,
        "busy",
        RELIABILITY_MODE="hang",  # execute never returns on its own
        RELIABILITY_GRACE=str(GRACE),
    )
    operator.wait_event("execute")
    operator.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = operator.process.wait(GRACE + SLACK)
    elapsed = time.monotonic() - signalled

    assert code == 1, operator.describe()  # exited by itself, not killed by the signal
    assert elapsed < GRACE + SLACK
    result = operator.wait_event("result")
    assert result["outcome"] == "cancelled" and result["reported"], operator.describe()
    assert "SIGTERM" in result["message"]
    kinds = operator.kinds()  # notifications are delivered in order (callbacks run elsewhere)
    assert kinds.index("cancelled") < kinds.index("cleanup_started") < kinds.index("completed")
    assert "cleanup" in kinds and "outcome_reported" in kinds
    stage = clara_platform.job(job_id).stages["busy"]
    assert stage.state is StageState.CANCELLED
    assert stage.reports_applied == 1
    assert "SIGTERM" in stage.message


def test_sigterm_while_waiting_for_inputs_skips_execute(
    clara_platform: MockPlatform, operators: list[OperatorProcess]
) -> None:
    # "first" never runs, so "second" waits for its inputs until the signal.
    job_id = clara_platform.create_job(
        [StageSpec("first"), StageSpec("second", inputs=(InputRef("/in", "first"),))]
    )
    operator = launch_operator(
        operators, clara_platform, job_id, "second", RELIABILITY_GRACE=str(GRACE)
    )
    operator.wait_event("waiting_for_inputs")
    operator.process.send_signal(signal.SIGTERM)
    code = operator.process.wait(GRACE + SLACK)

    assert code == 1, operator.describe()
    result = operator.wait_event("result")
    assert result["outcome"] == "cancelled" and result["reported"]
    assert "execute" not in operator.kinds()
    assert "cleanup" in operator.kinds()
    job = clara_platform.job(job_id)
    assert job.stages["second"].state is StageState.CANCELLED
    assert job.stages["second"].reports_applied == 1
    assert job.stages["first"].state is StageState.READY  # a local cancel, not a job cancel


def test_a_second_sigterm_terminates_at_once(
    clara_platform: MockPlatform, operators: list[OperatorProcess]
) -> None:
    job_id = clara_platform.create_job([StageSpec("stubborn")])
    # A cleanup that hangs: the first SIGTERM starts it, the second one ends the process.
    operator = launch_operator(
        operators,
        clara_platform,
        job_id,
        "stubborn",
        RELIABILITY_MODE="hang",
        RELIABILITY_CLEANUP="hang",
        RELIABILITY_GRACE="60",
    )
    operator.wait_event("execute")
    operator.process.send_signal(signal.SIGTERM)
    operator.wait_event("cleanup")
    operator.process.send_signal(signal.SIGTERM)
    assert operator.process.wait(WAIT) == -signal.SIGTERM


def test_handler_is_installed_only_when_sigterm_is_default_and_is_restored_after(
    clara_platform: MockPlatform,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    seen: list[Any] = []

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        seen.append(signal.getsignal(signal.SIGTERM))
        return True

    def run(**kwargs: Any) -> None:
        job_id = clara_platform.create_job([StageSpec("only")])
        driver = clara.Driver(
            execute=execute,
            target=clara_platform.address,
            job_id=job_id,
            stage_name="only",
            **kwargs,
        )
        driver.start()  # from the main thread
        assert driver.wait_for_completion(WAIT).succeeded

    run()
    assert callable(seen[-1]) and seen[-1] is not signal.SIG_DFL  # handled while running
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # and put back afterwards

    run(handle_sigterm=False)  # opted out
    assert seen[-1] is signal.SIG_DFL

    def mine(signum: int, frame: Any) -> None:
        raise AssertionError("not expected to be called")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        run()  # the application handles SIGTERM itself: the driver leaves it alone
        assert seen[-1] is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
