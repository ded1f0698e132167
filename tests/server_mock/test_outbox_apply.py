"""Outcomes from a stage's outbox (server_mock._outbox): applied once, bad records refused.

The apply rules are unit-tested on a :class:`Job`; the runner's use of them with real operator
processes that leave a record (a good one, a bad one) and exit without reporting.
"""

from __future__ import annotations

import json
import logging
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clara.contract import OUTBOX_RECORD_NAME, OUTBOX_SCHEMA_VERSION
from server_mock import InputRef, JobState, MockPlatform, StageSpec, StageState
from server_mock._client import PlatformClient
from server_mock._jobs import Job, StageOutcome
from server_mock._outbox import MAX_RECORD_BYTES, apply_outbox
from server_mock._runner import LocalProcessLauncher, RunnerTimeouts

WAIT = 60.0
JOB_ID = uuid.UUID("0e7d3c4a-3b7f-4d6e-9a55-6f1d2c3b4a59")


def record(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": OUTBOX_SCHEMA_VERSION,
        "job_id": str(JOB_ID),
        "stage_name": "s",
        "report_id": "report-1",
        "outcome": "succeeded",
        "message": "all callbacks succeeded",
        "written_at": 1_700_000_000.5,
    }
    document.update(changes)
    return document


def put(folder: Path, content: dict[str, Any] | str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OUTBOX_RECORD_NAME
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def started_job(*specs: StageSpec) -> Job:
    job = Job(JOB_ID, "job", "pipeline", specs or [StageSpec("s")])
    job.start()
    return job


def test_a_record_is_applied_once_through_the_job_rules(tmp_path: Path) -> None:
    job = started_job()
    put(tmp_path, record())
    assert apply_outbox(job, "s", tmp_path).applied
    stage = job.stage("s")
    assert (stage.state, stage.message, stage.report_id) == (
        StageState.SUCCEEDED,
        "all callbacks succeeded",
        "report-1",
    )
    # Again (a restarted platform finds the record still there): nothing changes.
    assert apply_outbox(job, "s", tmp_path).applied
    assert stage.reports_applied == 1
    assert job.state is JobState.SUCCEEDED


def test_a_record_already_received_over_grpc_is_not_applied_twice(tmp_path: Path) -> None:
    job = started_job()
    job.complete_stage("s", "report-1", StageOutcome.FAILED, "execute returned False")
    put(tmp_path, record(outcome="failed", message="execute returned False"))
    result = apply_outbox(job, "s", tmp_path)
    assert result.applied and not result.problem  # the same report: acknowledged again
    assert job.stage("s").reports_applied == 1


def test_a_record_for_a_stage_that_ended_otherwise_changes_nothing(tmp_path: Path) -> None:
    job = started_job()
    job.cancel("cancelled by request")
    put(tmp_path, record())
    result = apply_outbox(job, "s", tmp_path)
    assert not result.applied and not result.problem
    assert job.stage("s").state is StageState.CANCELLED
    assert job.stage("s").reports_applied == 0


def test_no_record_no_change(tmp_path: Path) -> None:
    job = started_job()
    assert apply_outbox(job, "s", tmp_path / "missing") == apply_outbox(job, "s", tmp_path)
    assert not apply_outbox(job, "s", tmp_path).applied
    assert job.stage("s").state is StageState.READY


@pytest.mark.parametrize(
    ("content", "named"),
    [
        pytest.param("{not json", "is not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "is not JSON", id="not-utf8"),
        pytest.param("[1, 2]", "expected a JSON object", id="not-an-object"),
        pytest.param(record(schema=2), "schema: 2", id="other-schema"),
        pytest.param(record(schema=True), "schema: True", id="schema-bool"),
        pytest.param(record(outcome="exploded"), "outcome: 'exploded'", id="bad-outcome"),
        pytest.param(record(report_id=""), "report_id", id="empty-report-id"),
        pytest.param(record(report_id="a b"), "report_id", id="report-id-space"),
        pytest.param(record(message=None), "message: None", id="no-message"),
        pytest.param(record(written_at="now"), "written_at", id="bad-time"),
        pytest.param(record(job_id="j"), "job_id: 'j' is not a UUID", id="bad-job-id"),
        pytest.param(record(stage_name="other"), "for stage 'other'", id="another-stage"),
        pytest.param(record(job_id=str(uuid.uuid4())), "of job", id="another-job"),
        pytest.param("x" * (MAX_RECORD_BYTES + 1), "larger than", id="too-large"),
    ],
)
def test_a_bad_record_is_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: Any, named: str
) -> None:
    job = started_job()
    path = put(tmp_path, content)
    with caplog.at_level(logging.WARNING, logger="server_mock.outbox"):
        result = apply_outbox(job, "s", tmp_path)
    assert not result.applied
    assert named in result.problem and str(path) in result.problem, result.problem
    assert result.note == f"; {result.problem}"
    assert job.stage("s").state is StageState.READY
    assert result.problem in caplog.text


def test_a_record_the_job_rules_refuse_is_reported_as_a_problem(tmp_path: Path) -> None:
    job = started_job(StageSpec("up"), StageSpec("s", inputs=(InputRef("/in", "up"),)))
    put(tmp_path, record())  # "s" is still waiting for its inputs: it cannot succeed
    result = apply_outbox(job, "s", tmp_path)
    assert not result.applied
    assert "cannot succeed before its inputs are ready" in result.problem
    assert job.stage("s").state is StageState.WAITING


# -- the runner applies what a process left in its outbox ---------------------------------

# Writes a record as a driver would have (the environment gives the folder and identity),
# then exits without reporting anything.
LEAVE_RECORD = textwrap.dedent(
    """
    import json, os, pathlib, sys
    folder = pathlib.Path(os.environ["NVIDIA_CLARA_OUTBOX"])
    kind = os.environ["RECORD"]
    record = {"schema": 1, "job_id": os.environ["NVIDIA_CLARA_JOBID"],
              "stage_name": os.environ["NVIDIA_CLARA_STAGENAME"], "report_id": "r-42",
              "outcome": kind, "message": f"the operator's own {kind} message",
              "written_at": 1.0}
    text = "{torn" if kind == "torn" else json.dumps(record)
    (folder / "outcome.json").write_text(text)
    sys.exit(int(os.environ.get("CODE", "0")))
    """
)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[MockPlatform]:
    operators = tmp_path / "ops"
    operators.mkdir()
    (operators / "leave_record.py").write_text(LEAVE_RECORD)
    holder: list[MockPlatform] = []
    launcher = LocalProcessLauncher(
        lambda: holder[0].address,
        operators,
        timeouts=RunnerTimeouts(timeout_grace=0.5, exit_grace=5, kill_grace=2),
    )
    mock = MockPlatform(workspace=tmp_path / "workspace", launcher=launcher)
    holder.append(mock)
    mock.start()
    try:
        yield mock
    finally:
        mock.call_async(launcher.stop_all, timeout=WAIT)
        mock.stop()


def run_leave_record(mock: MockPlatform, tmp_path: Path, kind: str, code: int) -> uuid.UUID:
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(
        textwrap.dedent(
            f"""
            api-version: 0.4.0
            name: outbox-test
            operators:
            - name: only
              container: {{image: test/outbox, command: ["python", "leave_record.py"]}}
              variables: {{RECORD: {kind}, CODE: "{code}"}}
              input: [{{path: /input}}]
            """
        )
    )
    with PlatformClient(mock.address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "outbox-job", [])
        client.start_job(job_id)
    return job_id


@pytest.mark.parametrize(
    ("kind", "code", "state"),
    [
        pytest.param("succeeded", 0, StageState.SUCCEEDED, id="succeeded"),
        pytest.param("failed", 1, StageState.FAILED, id="failed"),
    ],
)
def test_the_runner_applies_the_outcome_a_process_left_in_its_outbox(
    platform: MockPlatform, tmp_path: Path, kind: str, code: int, state: StageState
) -> None:
    job_id = run_leave_record(platform, tmp_path, kind, code)
    job = platform.wait_for_job(job_id, WAIT)
    stage = job.stages["only"]
    assert stage.state is state
    assert stage.message == f"the operator's own {kind} message"  # not "exited without ..."
    assert stage.reports_applied == 1


def test_a_torn_outbox_record_fails_the_stage_with_a_message_that_names_it(
    platform: MockPlatform, tmp_path: Path
) -> None:
    job_id = run_leave_record(platform, tmp_path, "torn", 0)
    job = platform.wait_for_job(job_id, WAIT)
    message = job.stages["only"].message
    assert job.stages["only"].state is StageState.FAILED
    assert "exited with code 0 before reporting an outcome" in message
    assert "its outbox record was not used" in message and "is not JSON" in message
    assert platform.running  # the supervisor went on
    # The record's folder is the stage's own, in the job's payload.
    layout = platform.call(lambda: platform.state.job_records[job_id]).layout
    assert str(layout.outbox_dir("only") / OUTBOX_RECORD_NAME) in message
