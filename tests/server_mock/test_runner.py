"""Operators as local processes: environment, logs, crashes, timeouts, cancellation."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_mock import JobState, MockPlatform, StageState
from server_mock._client import PlatformClient
from server_mock._definition import parse_pipeline_definition
from server_mock._runner import (
    LocalProcessLauncher,
    OperatorMapError,
    RunnerTimeouts,
    load_operator_map,
)

WAIT = 60.0

DRIVER_OPERATOR = textwrap.dedent(
    """
    import os, sys, pathlib, clara

    def execute(driver, payload):
        out = pathlib.Path(payload.output().path)
        names = sorted(p.name for p in pathlib.Path(payload.input().path).iterdir())
        (out / "seen.txt").write_text(",".join(names) + "|" + os.environ.get("GREETING", ""))
        print("executed", driver.stage_name, flush=True)
        return os.environ.get("FAIL") != "1"

    driver = clara.Driver(execute=execute)
    driver.start()
    sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """
)


def pipeline(operators: str) -> str:
    return "api-version: 0.4.0\nname: runner-test\noperators:\n" + textwrap.dedent(operators)


@pytest.fixture
def operators_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "driver_op.py").write_text(DRIVER_OPERATOR)
    return folder


@pytest.fixture
def platform(
    operators_dir: Path, tmp_path: Path
) -> Iterator[tuple[MockPlatform, LocalProcessLauncher]]:
    holder: list[MockPlatform] = []
    launcher = LocalProcessLauncher(
        lambda: holder[0].address,
        operators_dir,
        timeouts=RunnerTimeouts(timeout_grace=0.5, exit_grace=5, kill_grace=2),
    )
    mock = MockPlatform(workspace=tmp_path / "workspace", launcher=launcher)
    holder.append(mock)
    mock.start()
    try:
        yield mock, launcher
    finally:
        mock.call_async(launcher.stop_all, timeout=WAIT)
        mock.stop()


def run_pipeline(
    mock: MockPlatform, tmp_path: Path, text: str, inputs: dict[str, str]
) -> uuid.UUID:
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(text)
    source = tmp_path / "input"
    source.mkdir(exist_ok=True)
    for name, content in inputs.items():
        (source / name).write_text(content)
    with PlatformClient(mock.address) as client:
        pipeline_id = client.create_pipeline(definition)
        payload_id = client.create_payload()
        client.upload_folder(payload_id, source)
        job_id = client.create_job(pipeline_id, "runner-job", [payload_id])
        client.start_job(job_id)
    return job_id


def test_operators_run_as_processes_in_dag_order_with_their_environment(
    platform: tuple[MockPlatform, LocalProcessLauncher], tmp_path: Path
) -> None:
    mock, launcher = platform
    job_id = run_pipeline(
        mock,
        tmp_path,
        pipeline(
            """
            - name: first
              container: {image: test/first, command: ["python", "driver_op.py"]}
              variables: {GREETING: hello}
              input: [{path: /input}]
              output: [{path: /output}]
            - name: second
              container: {image: test/second, command: ["python", "driver_op.py"]}
              input: [{from: first, path: /input}]
              output: [{path: /output}]
            """
        ),
        {"a.txt": "A", "b.txt": "B"},
    )
    job = mock.wait_for_job(job_id, WAIT)
    assert job.state is JobState.SUCCEEDED, job.message
    record = mock.call(lambda: mock.state.job_records[job_id])
    first_out = record.layout.root / "operators" / "first" / "seen.txt"
    second_out = record.layout.root / "operators" / "second" / "seen.txt"
    assert first_out.read_text() == "a.txt,b.txt|hello"
    # The second stage reads the first stage's output folder.
    assert second_out.read_text() == "seen.txt|"
    assert mock.call_async(lambda: launcher.wait_idle(WAIT), WAIT + 5)
    assert launcher.exit_codes[(str(job_id), "first")] == 0
    with PlatformClient(mock.address) as client:
        assert "executed first" in client.read_logs(job_id, "first")


def test_a_process_that_exits_without_reporting_fails_its_stage(
    platform: tuple[MockPlatform, LocalProcessLauncher], tmp_path: Path
) -> None:
    mock, _ = platform
    job_id = run_pipeline(
        mock,
        tmp_path,
        pipeline(
            """
            - name: crash
              container:
                image: test/crash
                command: ["python", "-c", "import sys; print('bye'); sys.exit(3)"]
              input: [{path: /input}]
              output: [{path: /output}]
            - name: after
              container: {image: test/after, command: ["python", "driver_op.py"]}
              input: [{from: crash, path: /input}]
            """
        ),
        {"x": "1"},
    )
    job = mock.wait_for_job(job_id, WAIT)
    assert job.state is JobState.FAILED
    assert job.stages["crash"].state is StageState.FAILED
    assert "exited with code 3 before reporting" in job.stages["crash"].message
    assert job.stages["after"].state is StageState.CANCELLED


def test_a_stage_past_its_timeout_is_timed_out_and_its_process_stopped(
    platform: tuple[MockPlatform, LocalProcessLauncher], tmp_path: Path
) -> None:
    mock, launcher = platform
    # No driver at all: only the platform's own enforcement can end this stage.
    job_id = run_pipeline(
        mock,
        tmp_path,
        pipeline(
            """
            - name: hang
              container:
                image: test/hang
                command: ["python", "-c", "import time; time.sleep(600)"]
              input: [{path: /input}]
              timeout: 1
            """
        ),
        {"x": "1"},
    )
    job = mock.wait_for_job(job_id, WAIT)
    assert job.stages["hang"].state is StageState.TIMED_OUT
    assert "ran past its timeout of 0:00:01" in job.stages["hang"].message
    assert mock.call_async(lambda: launcher.wait_idle(WAIT), WAIT + 5)
    assert launcher.exit_codes[(str(job_id), "hang")] < 0  # stopped by a signal


def test_cancel_stops_running_operators(
    platform: tuple[MockPlatform, LocalProcessLauncher], tmp_path: Path
) -> None:
    mock, launcher = platform
    job_id = run_pipeline(
        mock,
        tmp_path,
        pipeline(
            """
            - name: hang
              container:
                image: test/hang
                command: ["python", "-c", "import time; time.sleep(600)"]
              input: [{path: /input}]
            """
        ),
        {"x": "1"},
    )
    mock.wait_for_stage(job_id, "hang", lambda s: s.state is StageState.READY, WAIT)
    with PlatformClient(mock.address) as client:
        client.cancel_job(job_id, "test")
    assert mock.wait_for_job(job_id, WAIT).state is JobState.CANCELLED
    assert mock.call_async(lambda: launcher.wait_idle(WAIT), WAIT + 5)


def test_operator_without_a_command_is_refused_before_anything_starts(
    platform: tuple[MockPlatform, LocalProcessLauncher], tmp_path: Path
) -> None:
    mock, _ = platform
    with pytest.raises(Exception, match="no local command for container test/none:latest"):
        run_pipeline(
            mock,
            tmp_path,
            pipeline(
                """
                - name: nothing
                  container: {image: test/none}
                  input: [{path: /input}]
                """
            ),
            {"x": "1"},
        )


def test_operator_map_overrides_the_container_command(tmp_path: Path) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text("'test/first:0.1': python driver_op.py\ntest/other: [echo, hi]\n")
    commands = load_operator_map(mapping)
    assert commands == {"test/first:0.1": ["python", "driver_op.py"], "test/other": ["echo", "hi"]}
    launcher = LocalProcessLauncher(lambda: "127.0.0.1:1", tmp_path, operator_map=commands)
    definition = parse_pipeline_definition(
        pipeline(
            """
            - name: first
              container: {image: test/first, tag: "0.1", command: ["ignored"]}
            - name: other
              container: {image: test/other, tag: "9"}
            """
        )
    )
    assert launcher.command_for(definition.operator("first")) == [sys.executable, "driver_op.py"]
    assert launcher.command_for(definition.operator("other")) == ["echo", "hi"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a mapping"),
        ("image: []", "entry 'image': expected a non-empty command"),
        ("image: [1]", "entry 'image'"),
        ("a: [", "operator map"),
    ],
)
def test_bad_operator_map_names_the_entry(tmp_path: Path, text: str, message: str) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text(text)
    with pytest.raises(OperatorMapError, match=message.replace("[", r"\[")):
        load_operator_map(mapping)
