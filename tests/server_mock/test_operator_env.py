"""The environment the mock gives an operator process (server_mock._operator_env)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

import clara
from server_mock import InputRef, OutputRef, StageSpec
from server_mock._jobs import Job
from server_mock._operator_env import PLATFORM_VARIABLES, operator_environment

JOB_ID = uuid.UUID("2a3c4f50-7f6e-4a8e-9d4c-1b2a3c4d5e6f")
STAGE = StageSpec(
    "segment",
    inputs=(
        InputRef("/ws/job/input", declared_path="/input"),
        InputRef("/ws/job/operators/load/mask", "load", "mask", "mask", "/input/mask"),
    ),
    outputs=(OutputRef("/ws/job/operators/segment/output", "", "/output"),),
    timeout=timedelta(seconds=90),
    variables={"THRESHOLD": "0.5", "NVIDIA_CLARA_STAGE_TOKEN": "forged"},
)


def environment(stage: StageSpec = STAGE, **settings: object) -> dict[str, str]:
    upstream = [StageSpec(name) for name in sorted(stage.upstream)]
    job = Job(JOB_ID, "ct-42", "pipeline-1", [*upstream, stage])
    kwargs: dict[str, object] = {
        "logs_dir": Path("/ws/job/logs"),
        "publishing_dir": Path("/ws/job/publish/segment"),
        "stage_service": "127.0.0.1:5000",
        "inherited": {"PATH": "/usr/bin"},
        "stage_token": "s3cret-token-of-the-stage",
        **settings,
    }
    return operator_environment(job, stage, **kwargs)  # type: ignore[arg-type]


def test_every_variable_a_clara_operator_reads_is_set() -> None:
    env = environment()
    assert env["NVIDIA_CLARA_STAGE_SERVICE"] == "127.0.0.1:5000"
    assert env["NVIDIA_CLARA_JOBID"] == str(JOB_ID)
    assert env["NVIDIA_CLARA_STAGENAME"] == "segment"
    assert env["NVIDIA_CLARA_JOBNAME"] == "ct-42"
    assert env["NVIDIA_CLARA_TIMEOUT"] == "90"
    assert env["NVIDIA_CLARA_INPUTPATHS"] == ":/ws/job/input;mask:/ws/job/operators/load/mask"
    assert env["NVIDIA_CLARA_OUTPUTPATHS"] == ":/ws/job/operators/segment/output"
    assert env["NVIDIA_CLARA_INPUT"] == "/ws/job/input"
    assert env["NVIDIA_CLARA_OUTPUT"] == "/ws/job/operators/segment/output"
    assert env["NVIDIA_CLARA_LOGS"] == "/ws/job/logs"
    assert env["NVIDIA_CLARA_PUBLISHING"] == "/ws/job/publish/segment"
    assert env["THRESHOLD"] == "0.5"
    assert env["PATH"] == "/usr/bin"
    # What the driver makes of it: the same identity, before any context arrives.
    driver = clara.Driver(environ=env, handle_sigterm=False)
    assert (driver.job_id, driver.stage_name) == (JOB_ID, "segment")
    assert (driver.job_name, driver.stage_timeout) == ("ct-42", timedelta(seconds=90))


def test_a_single_entry_splits_as_nvidias_operators_split_it() -> None:
    stage = StageSpec(
        "check",
        inputs=(InputRef("/ws/job/input", declared_path="/input"),),
        outputs=(OutputRef("/ws/job/operators/check/output", "dcmout", "/output"),),
    )
    env = environment(stage)
    assert env["NVIDIA_CLARA_INPUTPATHS"].split(":")[1] == "/ws/job/input"
    assert env["NVIDIA_CLARA_OUTPUTPATHS"].split(":")[1] == "/ws/job/operators/check/output"
    assert env["NVIDIA_CLARA_TIMEOUT"] == "600"


def test_no_platform_variable_is_inherited_and_none_replaces_the_token() -> None:
    inherited = {name: "from-the-shell" for name in PLATFORM_VARIABLES}
    inherited["NVIDIA_TRITON_HTTPURI"] = "localhost:8000"  # not the platform's: passes through
    env = environment(inherited=inherited, stage_token=None)
    assert "from-the-shell" not in env.values()
    assert "NVIDIA_CLARA_NOSYNCLOCK" not in env
    assert env["NVIDIA_TRITON_HTTPURI"] == "localhost:8000"
    assert env["NVIDIA_CLARA_STAGE_TOKEN"] == "forged"  # no token issued: the variable stands
    assert (
        environment()["NVIDIA_CLARA_STAGE_TOKEN"] == "s3cret-token-of-the-stage"
    )  # issued: it wins


def test_the_outbox_folder_is_set_when_the_platform_reads_outboxes() -> None:
    env = environment(outbox_dir=Path("/ws/job/outbox/segment"))
    assert env["NVIDIA_CLARA_OUTBOX"] == "/ws/job/outbox/segment"
    # Never inherited: an outbox left in the mock's shell is not the stage's.
    assert "NVIDIA_CLARA_OUTBOX" in PLATFORM_VARIABLES
    assert "NVIDIA_CLARA_OUTBOX" not in environment(inherited={"NVIDIA_CLARA_OUTBOX": "/tmp/x"})


def test_extra_variables_come_before_the_operators_own() -> None:
    env = environment(extra={"NVIDIA_CLARA_TLS_CA": "/pki/ca.pem", "THRESHOLD": "0.9"})
    assert env["NVIDIA_CLARA_TLS_CA"] == "/pki/ca.pem"
    assert env["THRESHOLD"] == "0.5"


def test_a_stage_without_entries_gets_no_paths_variables() -> None:
    env = environment(StageSpec("lonely"))
    for name in ("INPUTPATHS", "OUTPUTPATHS", "INPUT", "OUTPUT"):
        assert f"NVIDIA_CLARA_{name}" not in env


def test_a_path_that_cannot_be_listed_leaves_the_variable_out_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = StageSpec("odd", inputs=(InputRef("/ws/odd;folder"),))
    with caplog.at_level(logging.WARNING, logger="server_mock.runner"):
        env = environment(stage)
    assert "NVIDIA_CLARA_INPUTPATHS" not in env
    assert env["NVIDIA_CLARA_INPUT"] == "/ws/odd;folder"
    assert any("NVIDIA_CLARA_INPUTPATHS not set" in r.getMessage() for r in caplog.records)


def test_building_it_changes_nothing() -> None:
    inherited = {"PATH": "/usr/bin", "NVIDIA_CLARA_JOBID": "stale"}
    before = dict(inherited)
    environment(inherited=inherited)
    assert inherited == before
