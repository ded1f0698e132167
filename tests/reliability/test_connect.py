"""1. The platform is not reachable when the driver starts."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from _faults import WAIT, Recorder

import clara
from server_mock import MockPlatform, StageSpec, StageState

CONNECT_RETRY = clara.NotificationKind.CONNECT_RETRY


def test_unreachable_platform_is_retried_until_the_deadline_then_fails_clearly(
    recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    cleaned = threading.Event()
    # Bound but not listening: every connection is refused, and no one else can take the port.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{placeholder.getsockname()[1]}"
        driver = clara.Driver(
            execute=lambda d, p: True,
            cleanup=lambda d: cleaned.set() is None,
            notify=recorder.notify,
            target=address,
            job_id=uuid.uuid4(),
            stage_name="lonely",
            timeouts=clara.DriverTimeouts(connect=timedelta(seconds=1.5)),
            retry=clara.RetryConfig(initial=0.05, maximum=0.2),
        )
        drivers.append(driver)
        started = time.monotonic()
        driver.start()
        result = driver.wait_for_completion(WAIT)
        elapsed = time.monotonic() - started

    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.PlatformUnavailableError)
    assert not result.reported  # there is no one to report to
    assert cleaned.is_set()  # cleanup runs on this path too
    # Retried until the deadline (the last wait may stop one capped delay short of it).
    assert 1.5 - 0.2 <= elapsed < 1.5 + 5
    # One notification per failed attempt that is retried, numbered, naming the call.
    retries = recorder.of(CONNECT_RETRY)
    assert len(retries) >= 3
    for number, notification in enumerate(retries, start=1):
        assert notification.message.startswith(f"WatchStage attempt {number} failed")
        assert "UNAVAILABLE" in notification.message
    # A clear final error: which platform, for how long, how many attempts, the last cause.
    match = re.search(r"did not answer within 0:00:01.500000 \((\d+) attempts\)", result.message)
    assert match, result.message
    assert address in result.message
    assert int(match.group(1)) == len(retries) + 1
    assert recorder.kinds()[-1] is clara.NotificationKind.COMPLETED


def test_platform_coming_up_during_the_retries_serves_the_stage(
    tmp_path: Path, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    # The job exists in a state file; the platform that owns it is down when the driver starts.
    state = tmp_path / "state.db"
    before = MockPlatform(state_path=state)
    address = before.start()
    job_id = before.create_job([StageSpec("late")])
    before.stop()

    driver = clara.Driver(
        execute=lambda d, p: True,
        notify=recorder.notify,
        target=address,
        job_id=job_id,
        stage_name="late",
        timeouts=clara.DriverTimeouts(connect=timedelta(seconds=60)),
        retry=clara.RetryConfig(initial=0.05, maximum=0.2),
    )
    drivers.append(driver)
    driver.start()
    recorder.wait_count(CONNECT_RETRY, 3, WAIT)  # it is retrying: now the platform comes up

    port = int(address.rsplit(":", 1)[1])
    with MockPlatform(port=port, state_path=state) as after:
        result = driver.wait_for_completion(WAIT)
        stage = after.job(job_id).stages["late"]

    assert result.succeeded and result.reported
    assert stage.state is StageState.SUCCEEDED
    assert stage.reports_applied == 1
    kinds = recorder.kinds()
    assert kinds.index(clara.NotificationKind.CONNECTED) > kinds.index(CONNECT_RETRY)
