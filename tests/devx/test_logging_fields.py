"""Every notification is also a log record on the ``clara`` logger, with structured fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import clara
from server_mock import InputRef, StageSpec
from server_mock.pytest_plugin import StageRunner


def event_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "clara" and hasattr(r, "event")]


def test_each_notification_is_a_record_with_job_stage_and_event(
    clara_stage_runner: StageRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara")

    run = clara_stage_runner(execute=lambda d, p: True, stage="logged")

    records = event_records(caplog)
    assert [r.event for r in records] == [n.kind.value for n in run.notifications]
    for record in records:
        assert record.job_id == str(run.job_id)
        assert record.stage == "logged"
        assert record.getMessage().startswith(f"{record.event}: ")
    kinds = {r.event for r in records}
    assert {"started", "context_received", "execute_started", "completed"} <= kinds
    assert all(r.levelno == logging.INFO for r in records)


def test_failures_are_logged_at_error_with_the_exception(
    clara_stage_runner: StageRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara")

    def broken(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        raise ValueError("bad voxel")

    run = clara_stage_runner(execute=broken, stage="broken")

    errors = [r for r in event_records(caplog) if r.event == "error"]
    assert len(errors) == 1
    (error,) = errors
    assert error.levelno == logging.ERROR
    assert (error.job_id, error.stage) == (str(run.job_id), "broken")
    assert error.exc_info is not None and isinstance(error.exc_info[1], ValueError)
    assert "execute raised ValueError: bad voxel" in error.getMessage()


def test_cancellation_is_a_warning(
    clara_stage_runner: StageRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara")
    stages = [StageSpec("up"), StageSpec("down", inputs=(InputRef("/x", from_stage="up"),))]

    clara_stage_runner(stages=stages, upstream={"up": "failed"})

    (cancelled,) = [r for r in event_records(caplog) if r.event == "cancelled"]
    assert cancelled.levelno == logging.WARNING
    assert cancelled.stage == "down"


def test_a_formatter_can_show_the_fields(
    clara_stage_runner: StageRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara")
    run = clara_stage_runner(execute=lambda d, p: True, stage="fmt")
    formatter = logging.Formatter("%(job_id)s %(stage)s %(event)s %(message)s")
    first = formatter.format(event_records(caplog)[0])
    assert first.startswith(f"{run.job_id} fmt started started: ")
