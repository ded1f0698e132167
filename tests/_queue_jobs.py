"""Jobs that wait for capacity: a holding operator and Platform API calls with priorities.

The operator (:func:`holding_operator`) connects to a test's :class:`~_launch.Listener` when
its execute starts, says who it is (job id, pid, ``CUDA_VISIBLE_DEVICES``) and holds its
stage until the test sends a byte or closes the connection; the connection ends when the
process does (after its outcome was reported). The test learns that a job runs, ends it, and
learns that it ended, without polling or sleeping.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from _launch import IO, Listener, driver_operator, pipeline

from server_mock._client import PlatformClient
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2, jobs_pb2_grpc

HOLD = """
import os, socket
host, port = os.environ["LISTENER"].rsplit(":", 1)
with socket.create_connection((host, int(port))) as peer:
    os.dup(peer.fileno())  # the connection ends with the process, not with this block
    job, gpus = os.environ["NVIDIA_CLARA_JOBID"], os.environ.get("CUDA_VISIBLE_DEVICES")
    peer.sendall(f"{job} {os.getpid()} gpus={gpus}\\n".encode())
    peer.recv(1)
"""

HEADER = common_pb2.RequestHeader(user_agent="capacity-test")
LOWER, NORMAL, HIGHER, IMMEDIATE = (
    jobs_pb2.JOB_PRIORITY_LOWER,
    jobs_pb2.JOB_PRIORITY_NORMAL,
    jobs_pb2.JOB_PRIORITY_HIGHER,
    jobs_pb2.JOB_PRIORITY_IMMEDIATE,
)


def holding_operator(name: str, listener: str, requests: str) -> str:
    """A definition with one holding operator with these ``requests`` (YAML flow mapping)."""
    return pipeline(
        driver_operator(name, HOLD, f"{IO}requests: {requests}\n", {"LISTENER": listener}),
        name=f"hold-{name}",
    )


@dataclass(frozen=True, slots=True)
class Holder:
    """A running holding operator: who it is, and its connection (close it to end it)."""

    job_id: uuid.UUID
    pid: int
    gpus: str
    connection: socket.socket

    def release(self) -> None:
        """Let its execute return (it then succeeds)."""
        self.connection.sendall(b"g")

    def wait_exit(self) -> None:
        """Wait until the operator's process is gone (its outcome reported first)."""
        assert Listener.closed(self.connection), f"operator {self.pid} did not exit"


def next_holder(listener: Listener) -> Holder:
    """The next holding operator to start running (waits at most the listener's bound)."""
    connection, line = listener.accept()
    job, pid, gpus = line.split(" ")
    return Holder(uuid.UUID(job), int(pid), gpus.removeprefix("gpus="), connection)


def _ident(value: uuid.UUID) -> common_pb2.Identifier:
    return common_pb2.Identifier(value=value.hex)


class Jobs:
    """Platform API calls over real gRPC, with the answers as the protos give them."""

    def __init__(self, address: str, folder: Path) -> None:
        self._address = address
        self._folder = folder
        self._channel = grpc.insecure_channel(address)
        self._stub = jobs_pb2_grpc.JobsStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def create_pipeline(self, definition: str) -> uuid.UUID:
        path = self._folder / f"pipeline-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(definition)
        with PlatformClient(self._address) as client:
            return client.create_pipeline(path)

    def create(
        self, pipeline_id: uuid.UUID, name: str = "job", priority: int = NORMAL
    ) -> uuid.UUID:
        """A new job, not started; its input payload (a reusable one) holds ``in.txt``."""
        inputs = self._folder / f"input-{uuid.uuid4().hex[:8]}"
        inputs.mkdir()
        (inputs / "in.txt").write_text("input\n")
        with PlatformClient(self._address) as client:
            payload_id = client.create_payload()
            client.upload_folder(payload_id, inputs)
        created = self._stub.Create(
            jobs_pb2.JobsCreateRequest(
                header=HEADER,
                pipeline_id=common_pb2.Identifier(value=pipeline_id.hex),
                name=name,
                priority=priority,
                input_payloads=[common_pb2.Identifier(value=payload_id.hex)],
            ),
            timeout=30,
        )
        assert created.header.code == 0, created.header.messages
        return uuid.UUID(created.job_id.value)

    def start(self, job_id: uuid.UUID) -> jobs_pb2.JobsStartResponse:
        """Jobs.Start's answer (not checked: a refusal is an answer too)."""
        return self._stub.Start(
            jobs_pb2.JobsStartRequest(header=HEADER, job_id=_ident(job_id)),
            timeout=30,
        )

    def status(self, job_id: uuid.UUID) -> jobs_pb2.JobsStatusResponse:
        answer = self._stub.Status(
            jobs_pb2.JobsStatusRequest(header=HEADER, job_id=_ident(job_id)),
            timeout=30,
        )
        assert answer.header.code == 0, answer.header.messages
        return answer

    def cancel(self, job_id: uuid.UUID) -> jobs_pb2.JobsCancelResponse:
        return self._stub.Cancel(
            jobs_pb2.JobsCancelRequest(header=HEADER, job_id=_ident(job_id)),
            timeout=30,
        )
