"""An operator's ``services`` at Jobs.Start: connections set, or a clear refusal, never a hang."""

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


@pytest.mark.parametrize("mapped", [False, True])
def test_start_refuses_a_service_it_cannot_run_naming_it_and_the_image(
    tmp_path: Path, mapped: bool
) -> None:
    operator_map = {"nvcr.io/nvidia/tensorrtserver": ["true"]} if mapped else {}
    with platform(tmp_path, runner="process", operator_map=operator_map) as running:
        with pytest.raises(PlatformApiError) as refused:
            running.submit(_definition())
        message = str(refused.value)
        assert "'infer'" in message and "services[0]" in message and "'trtis'" in message
        assert "NVIDIA_CLARA_TRTISURI" in message
        if not mapped:
            assert "'nvcr.io/nvidia/tensorrtserver:19.08-py3'" in message
            assert "--operator-map" in message
        (job_id,) = _job_ids(running)
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}


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
