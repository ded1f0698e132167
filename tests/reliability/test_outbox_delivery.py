"""10. An outcome survives an outage longer than the report budget: the outbox delivers it.

A real ``clara-mock serve --state`` process supervises real operator processes whose stage
API traffic goes through a TCP proxy (``NVIDIA_CLARA_STAGE_SERVICE`` points at it). While the
operator executes, the proxy stalls its connection and refuses new ones, and stays so for
longer than the driver's report budget: every ``CompleteStage`` attempt fails, the driver
gives up, and the process exits. The platform itself stays up, sees the exit, and applies the
outcome the driver had written to its outbox, with the operator's own outcome and message.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _faults import (
    WAIT,
    ControlServer,
    ServerProcess,
    StageFaults,
    faulty_stage_server,
    pipeline_yaml,
)
from _proxy import TcpProxy

import clara
from clara.contract import ENV_OUTBOX, ENV_STAGE_SERVICE, OUTBOX_RECORD_NAME
from server_mock import MockPlatform, StageSpec
from server_mock._client import PlatformClient

REPORT_BUDGET = 2.0  # seconds: the operators' DriverTimeouts.report


@pytest.fixture
def proxied(serve: ServerProcess) -> Iterator[tuple[str, TcpProxy]]:
    """The started server's address, and a proxy to it."""
    address = serve.start()
    proxy = TcpProxy(address)
    try:
        yield address, proxy
    finally:
        proxy.close()


def stage_rows(state: Path) -> dict[str, tuple[str, str, int]]:
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT name, state, message, reports_applied FROM stages").fetchall()
    return {name: (state_, message, applied) for name, state_, message, applied in rows}


@pytest.mark.parametrize(
    ("mode", "outcome", "message", "status"),
    [
        pytest.param("go", "succeeded", "all callbacks succeeded", "HEALTHY", id="succeeded"),
        pytest.param("go-fail", "failed", "execute returned False", "FAULTED", id="failed"),
    ],
)
def test_an_outcome_the_driver_could_not_report_is_applied_from_its_outbox(
    tmp_path: Path,
    serve: ServerProcess,
    proxied: tuple[str, TcpProxy],
    control: ControlServer,
    mode: str,
    outcome: str,
    message: str,
    status: str,
) -> None:
    address, proxy = proxied
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(
        pipeline_yaml(
            control.address,
            [("only", None, mode), ("after", "only", "succeed")],
            # Only "only" goes through the proxy; "after" (the test's witness) does not.
            {"only": {ENV_STAGE_SERVICE: proxy.address, "RELIABILITY_REPORT": str(REPORT_BUDGET)}},
        )
    )
    with PlatformClient(address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "outbox", [])
        client.start_job(job_id)
    control.wait_event("only", "execute")
    control.wait_event("after", "waiting_for_inputs")

    proxy.refuse()  # the outage: no new connection gets through ...
    assert proxy.stall() == 1  # ... and the open one carries nothing any more
    control.send("only", "go")
    result = control.wait_event("only", "result")
    assert result["outcome"] == outcome and not result["reported"], control.messages
    told = " ".join(m.get("message", "") for m in control.messages if m["stage"] == "only")
    assert "could not report outcome" in told and "it waits in the outbox" in told
    control.wait_event("only", "exit")

    # The platform saw the process end and applied the outbox's outcome: "after" learns it.
    witness = control.wait_event("after", "result")
    assert witness["outcome"] == ("succeeded" if outcome == "succeeded" else "cancelled")
    control.wait_event("after", "exit")
    with PlatformClient(address) as client:
        job = client.job_status(job_id)
    assert (job.state, job.status) == ("STOPPED", status)

    # It is saved like any report: a restart of the platform keeps it.
    serve.kill()
    serve.start()
    with PlatformClient(address) as client:
        assert client.job_status(job_id).status == status
    only_state, only_message, applied = stage_rows(serve.state)["only"]
    assert (only_state, only_message, applied) == (outcome, message, 1)
    assert "before reporting" not in only_message
    (left,) = (tmp_path / "state.db.workspace").rglob(f"outbox/only/{OUTBOX_RECORD_NAME}")
    assert json.loads(left.read_text())["outcome"] == outcome


def test_an_unacknowledged_report_stays_in_the_outbox_with_its_report_id(
    clara_platform: MockPlatform, tmp_path: Path, drivers: list[clara.Driver[Any]]
) -> None:
    faults = StageFaults("CompleteStage", ["unavailable"] * 10_000)
    job_id = clara_platform.create_job([StageSpec("only")])
    with faulty_stage_server(clara_platform, faults) as address:
        driver: clara.Driver[Any] = clara.Driver(
            execute=lambda d, p: False,
            target=address,
            job_id=job_id,
            stage_name="only",
            environ={ENV_OUTBOX: str(tmp_path / "outbox")},
            timeouts=clara.DriverTimeouts(report=timedelta(seconds=0.5)),
            retry=clara.RetryConfig(initial=0.01, maximum=0.05),
            handle_sigterm=False,
        )
        drivers.append(driver)
        driver.start()
        result = driver.wait_for_completion(WAIT)
    assert not result.reported
    kept = json.loads((tmp_path / "outbox" / OUTBOX_RECORD_NAME).read_text())
    assert (kept["outcome"], kept["message"]) == ("failed", result.message)
    assert (kept["job_id"], kept["stage_name"]) == (str(job_id), "only")
    # The record carries the very report id every attempt carried.
    assert {r.report_id for r in faults.requests} == {kept["report_id"]}


def test_an_outbox_that_cannot_be_written_is_logged_and_the_report_still_ends(
    clara_platform: MockPlatform,
    tmp_path: Path,
    drivers: list[clara.Driver[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox folder should be")
    faults = StageFaults("CompleteStage", ["unavailable"] * 10_000)
    job_id = clara_platform.create_job([StageSpec("only")])
    with faulty_stage_server(clara_platform, faults) as address:
        driver: clara.Driver[Any] = clara.Driver(
            execute=lambda d, p: True,
            target=address,
            job_id=job_id,
            stage_name="only",
            environ={ENV_OUTBOX: str(blocker)},
            timeouts=clara.DriverTimeouts(report=timedelta(seconds=0.5)),
            retry=clara.RetryConfig(initial=0.01, maximum=0.05),
            handle_sigterm=False,
        )
        drivers.append(driver)
        driver.start()
        result = driver.wait_for_completion(WAIT)
    assert result.succeeded and not result.reported
    assert f"could not write the outcome to the outbox {blocker}" in caplog.text
    assert "waits in the outbox" not in caplog.text  # not claimed when it is not so
    assert blocker.read_text() == "a file where the outbox folder should be"
