"""Jobs.Start runs the definition as the job's named values make it, or refuses it clearly.

Template placeholders (``${{ name }}``) are filled from Jobs.Start's variables (the Template
page); a definition the mock cannot run (shared-memory inputs/outputs) is refused at Start,
naming the operator and the field, and nothing is launched.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from _launch import WAIT, platform

from server_mock import JobState
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2, jobs_pb2_grpc

TEMPLATE = """
api-version: 0.4.0
name: templated
parameters:
  greeting: hello
  mood: calm
operators:
- name: greeter
  container: {image: t/op, command: [python, op.py]}
  variables:
    GREETING: ${{ greeting }}
    MOOD: ${{ mood }}
    OPERATOR_CODE: |
      import os, pathlib
      text = os.environ["GREETING"] + " " + os.environ["MOOD"]
      pathlib.Path(payload.output().path, "said.txt").write_text(text)
  input: [{path: /input}]
  output: [{path: /output}]
"""

SHARED_MEMORY = """
api-version: 0.5.0
name: fast-io
operators:
- name: producer
  container: {image: t/op, command: [python, op.py]}
  input: [{path: /input, type: stream, element-type: text}]
  output:
  - name: volume
    type: array
    element-type: float32
    shape: [16, 16]
- name: consumer
  container: {image: t/op, command: [python, op.py]}
  input:
  - from: producer
    name: volume
    type: array
    element-type: float32
    shape: [16, 16]
  output: [{name: result, path: /output, type: stream, element-type: text}]
"""


def _start(
    address: str, job_id: uuid.UUID, variables: dict[str, str]
) -> jobs_pb2.JobsStartResponse:
    with grpc.insecure_channel(address) as channel:
        request = jobs_pb2.JobsStartRequest(
            header=common_pb2.RequestHeader(),
            job_id=common_pb2.Identifier(value=job_id.hex),
            Variables=[
                jobs_pb2.JobsStartRequest.NamedValue(name=k, value=v) for k, v in variables.items()
            ],
        )
        response: jobs_pb2.JobsStartResponse = jobs_pb2_grpc.JobsStub(channel).Start(
            request, timeout=WAIT
        )
        return response


@pytest.mark.parametrize(
    ("variables", "said"),
    [({}, "hello calm"), ({"greeting": "bonjour"}, "bonjour calm")],
)
def test_start_fills_the_template_from_the_jobs_named_values(
    tmp_path: Path, variables: dict[str, str], said: str
) -> None:
    with platform(tmp_path, runner="process") as running:
        job_id = running.create(TEMPLATE)
        assert _start(running.mock.address, job_id, variables).header.code == 0
        job = running.mock.wait_for_job(job_id, WAIT)
        assert job.state is JobState.SUCCEEDED, job.message
        layout = running.layout(job_id)
        assert (layout.root / "operators" / "greeter" / "said.txt").read_text() == said


def test_start_refuses_an_argument_the_template_does_not_declare(tmp_path: Path) -> None:
    with platform(tmp_path, runner="process") as running:
        job_id = running.create(TEMPLATE)
        response = _start(running.mock.address, job_id, {"colour": "blue"})
        assert response.header.code < 0
        assert "colour" in "\n".join(response.header.messages)
        assert running.mock.job(job_id).state is JobState.CREATED


def test_start_refuses_shared_memory_naming_the_operator_and_field(tmp_path: Path) -> None:
    with platform(tmp_path, runner="process") as running:
        job_id = running.create(SHARED_MEMORY)
        response = _start(running.mock.address, job_id, {})
        messages = "\n".join(response.header.messages)
        assert response.header.code < 0
        assert "producer" in messages and "output[0].type" in messages
        assert "disk payloads only" in messages
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}
