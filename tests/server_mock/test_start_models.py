"""An operator's ``models:`` at Jobs.Start: the uploaded model's files, or a clear refusal.

The model is uploaded through the Platform API's Models service; a real operator process
reads its file from the folder ``CLARA_MOCK_MODEL_PATHS`` names (``/models/<name>`` in the
sandbox, the repository's folder with the process runner).
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _launch import WAIT, platform

from server_mock import JobState
from server_mock._errors import ErrorCode
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

WITH_MODEL = """
api-version: 0.6.0
name: segmentation
operators:
- name: segmenter
  container: {image: t/op, command: [python, op.py]}
  models: [{name: liver}]
  variables:
    OPERATOR_CODE: |
      import os, pathlib
      name, _, folder = os.environ["CLARA_MOCK_MODEL_PATHS"].partition(":")
      config = pathlib.Path(folder, "liver", "config.pbtxt").read_text()
      out = pathlib.Path(payload.output("mask").path, "seen.txt")
      out.write_text(f"{name} {folder}\\n{config}")
  input: [{path: /input, type: stream, element-type: file}]
  output: [{name: mask, path: /output, type: stream, element-type: file}]
"""
CONFIG = "name: 'liver'\nplatform: 'onnxruntime_onnx'\n"


def _upload_model(address: str, name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("liver/config.pbtxt", CONFIG)
        zipped.writestr("liver/1/model.onnx", b"\x00weights")

    def chunks() -> Iterator[models_pb2.ModelsUploadModelRequest]:
        yield models_pb2.ModelsUploadModelRequest(
            details=models_pb2.ModelDetails(name=name), data=buffer.getvalue()
        )

    with grpc.insecure_channel(address) as channel:
        response = models_pb2_grpc.ModelsStub(channel).UploadModel(chunks(), timeout=WAIT)
    assert response.header.code == 0, response.header.messages


def _start(address: str, job_id: uuid.UUID) -> jobs_pb2.JobsStartResponse:
    with grpc.insecure_channel(address) as channel:
        response: jobs_pb2.JobsStartResponse = jobs_pb2_grpc.JobsStub(channel).Start(
            jobs_pb2.JobsStartRequest(job_id=common_pb2.Identifier(value=job_id.hex)),
            timeout=WAIT,
        )
        return response


@pytest.mark.parametrize("runner", ["sandbox", "process"])
def test_an_operator_reads_its_declared_model_files(tmp_path: Path, runner: str) -> None:
    with platform(tmp_path, runner=runner) as running:
        _upload_model(running.mock.address, "liver")
        job_id = running.create(WITH_MODEL)
        assert _start(running.mock.address, job_id).header.code == 0
        job = running.mock.wait_for_job(job_id, WAIT)
        assert job.state is JobState.SUCCEEDED, job.message
        output = running.layout(job_id).root / "operators" / "segmenter" / "mask"
        seen = (output / "seen.txt").read_text()
        name, folder = seen.splitlines()[0].split(" ", 1)
        assert name == "liver"
        repository = running.mock.call(lambda: running.mock.state.models.find("liver"))
        assert folder == ("/models/liver" if runner == "sandbox" else str(repository))
        assert seen.endswith(CONFIG)


def test_start_refuses_a_model_the_repository_does_not_hold(tmp_path: Path) -> None:
    with platform(tmp_path, runner="process") as running:
        job_id = running.create(WITH_MODEL)
        response = _start(running.mock.address, job_id)
        messages = "\n".join(response.header.messages)
        assert response.header.code == ErrorCode.MODEL_NOT_FOUND
        assert "'segmenter'" in messages and "'liver'" in messages
        assert "models[0].name" in messages
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}
