"""An operator's ``services`` at Jobs.Start: connections set, or a clear refusal, never a hang.

Starting the services the mock can run: tests/server_mock/test_services.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from _launch import driver_operator, pipeline, platform

from server_mock import JobState
from server_mock._client import PlatformApiError
from server_mock._definition import parse_pipeline_definition
from server_mock._operator_env import service_connections

SERVICE = """\
  services:
  - name: trtis
    container: {image: nvcr.io/nvidia/tensorrtserver, tag: 19.08-py3, command: [trtserver]}
    connections:
      http: [{name: NVIDIA_CLARA_TRTISURI, port: 8000}]
"""


def _definition(variables: dict[str, str] | None = None) -> str:
    code = """
    import os, pathlib
    pathlib.Path(payload.output().path, "uri.txt").write_text(os.environ["NVIDIA_CLARA_TRTISURI"])
    """
    return pipeline(driver_operator("infer", code, variables=variables) + SERVICE)


def _job_ids(running: object) -> set[uuid.UUID]:
    mock = running.mock  # type: ignore[attr-defined]
    return set(mock.call(lambda: set(mock.state.job_records)))


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        (
            "{image: nvcr.io/nvidia/tensorrtserver, tag: 19.08-py3, command: [trtserver]}",
            "it runs 'trtserver' from PATH",
        ),
        (
            "{image: nvcr.io/nvidia/tensorrtserver, tag: 19.08-py3}",
            "the image is not mapped and its container has no command",
        ),
    ],
)
def test_start_refuses_a_service_it_cannot_run_naming_it_and_what_to_map(
    tmp_path: Path, container: str, reason: str
) -> None:
    definition = _definition().replace(
        "{image: nvcr.io/nvidia/tensorrtserver, tag: 19.08-py3, command: [trtserver]}", container
    )
    with platform(tmp_path, runner="process") as running:
        with pytest.raises(PlatformApiError) as refused:
            running.submit(definition)
        message = str(refused.value)
        assert "operator 'infer', field services[0]: service 'trtis'" in message
        assert reason in message
        assert "map the image 'nvcr.io/nvidia/tensorrtserver:19.08-py3'" in message
        assert "--operator-map" in message
        assert "set NVIDIA_CLARA_TRTISURI in the operator's variables" in message
        (job_id,) = _job_ids(running)
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}
        assert not (running.layout(job_id).logs_dir / "services").exists()  # nothing started


def test_a_service_run_outside_the_mock_is_reached_through_the_operators_variables(
    tmp_path: Path,
) -> None:
    with platform(tmp_path, runner="process") as running:
        run = running.run(_definition({"NVIDIA_CLARA_TRTISURI": "127.0.0.1:9000"}))
        assert run.job.state is JobState.SUCCEEDED, run.job.message
        assert (run.output("infer") / "uri.txt").read_text() == "127.0.0.1:9000"


def test_each_http_connection_names_a_variable_with_the_services_address() -> None:
    definition = parse_pipeline_definition(
        pipeline(
            "- name: infer\n  container: {image: t/op}\n"
            + SERVICE
            + "      file: [{name: SHARED, path: /shared}]\n"
        )
    )
    assert service_connections(definition.operators[0]) == {
        "NVIDIA_CLARA_TRTISURI": "localhost:8000"
    }
