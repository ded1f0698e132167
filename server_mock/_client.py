"""A small client of the public Clara Platform API, used by the ``clara-mock`` CLI.

It speaks the legacy ``nvidia.clara.platform`` protocol like any other client, so the CLI
exercises the same API the published client uses. Errors (a non-OK status, or a response
header with a negative code) become :class:`PlatformApiError`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

__all__ = ["JobStatus", "OperatorStatus", "PlatformApiError", "PlatformClient"]

T = TypeVar("T")

CHUNK_BYTES = 64 * 1024
RPC_TIMEOUT = 60.0
_HEADER = common_pb2.RequestHeader(user_agent="clara-mock")


class PlatformApiError(Exception):
    """A Platform API call failed; the message says which call and why."""


@dataclass(frozen=True, slots=True)
class OperatorStatus:
    """One operator of a job, as Jobs.Status reports it."""

    name: str
    status: str


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job, as Jobs.Status reports it."""

    job_id: uuid.UUID
    name: str
    state: str
    status: str
    payload_id: uuid.UUID
    operators: tuple[OperatorStatus, ...]
    messages: tuple[str, ...]


def _id(value: uuid.UUID) -> common_pb2.Identifier:
    return common_pb2.Identifier(value=value.hex)


def _check(method: str, header: common_pb2.ResponseHeader) -> None:
    if header.code < 0:
        detail = "; ".join(header.messages) or f"code {header.code}"
        raise PlatformApiError(f"{method}: {detail}")


class PlatformClient:
    """Calls the Clara Platform API at ``target`` over an insecure loopback channel.

    Use as a context manager; the channel is closed on exit.
    """

    def __init__(self, target: str, channel: grpc.Channel | None = None) -> None:
        self._channel = channel or grpc.insecure_channel(target)
        self._pipelines = pipelines_pb2_grpc.PipelinesStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self._payloads = payloads_pb2_grpc.PayloadsStub(self._channel)

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _unary(self, method: str, call: Callable[..., object], request: object) -> object:
        try:
            return call(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            raise PlatformApiError(f"{method}: {error.code().name}: {error.details()}") from None

    def _stream(
        self, method: str, call: Callable[..., Iterable[T]], request: object
    ) -> Iterator[T]:
        """Iterate a server-streaming call, turning a failed status into PlatformApiError."""
        try:
            yield from call(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            raise PlatformApiError(f"{method}: {error.code().name}: {error.details()}") from None

    def create_pipeline(self, definition_path: Path) -> uuid.UUID:
        """Register a pipeline from its definition file."""
        request = pipelines_pb2.PipelinesCreateRequest(
            header=_HEADER,
            definition=pipelines_pb2.PipelineDefinitionFile(
                path=definition_path.name, content=definition_path.read_text(encoding="utf-8")
            ),
        )
        response = self._unary("Pipelines.Create", self._pipelines.Create, iter([request]))
        assert isinstance(response, pipelines_pb2.PipelinesCreateResponse)
        _check("Pipelines.Create", response.header)
        return uuid.UUID(response.pipeline_id.value)

    def create_payload(self) -> uuid.UUID:
        """Create a reusable payload."""
        response = self._unary(
            "Payloads.Create",
            self._payloads.Create,
            payloads_pb2.PayloadsCreateRequest(header=_HEADER),
        )
        assert isinstance(response, payloads_pb2.PayloadsCreateResponse)
        _check("Payloads.Create", response.header)
        return uuid.UUID(response.payload_id.value)

    def upload_folder(self, payload_id: uuid.UUID, folder: Path, prefix: str = "") -> int:
        """Upload every file under ``folder``; return the file count.

        Each file is named by its path relative to ``folder``, after ``prefix`` (e.g.
        ``"input/"`` for a job's own payload). Empty files are uploaded too.
        """
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            name = prefix + path.relative_to(folder).as_posix()
            response = self._unary(
                f"Payloads.Upload {name}",
                self._payloads.Upload,
                self._upload_requests(payload_id, name, path),
            )
            assert isinstance(response, payloads_pb2.PayloadsUploadResponse)
            _check(f"Payloads.Upload {name}", response.header)
        return len(files)

    @staticmethod
    def _upload_requests(
        payload_id: uuid.UUID, name: str, path: Path
    ) -> Iterator[payloads_pb2.PayloadsUploadRequest]:
        with path.open("rb") as stream:
            chunk = stream.read(CHUNK_BYTES)
            while True:
                # An empty file is one message without data: a stream of none would name no file.
                yield payloads_pb2.PayloadsUploadRequest(
                    header=_HEADER,
                    payload_id=_id(payload_id),
                    details=payloads_pb2.PayloadFileDetails(name=name, mode=0o644, size=len(chunk)),
                    data=chunk,
                )
                chunk = stream.read(CHUNK_BYTES)
                if not chunk:
                    return

    def payload_files(self, payload_id: uuid.UUID) -> list[str]:
        """The names of the files in a payload."""
        request = payloads_pb2.PayloadsDetailsRequest(header=_HEADER, payload_id=_id(payload_id))
        names = []
        for response in self._stream("Payloads.Details", self._payloads.Details, request):
            _check("Payloads.Details", response.header)
            if response.file.name:
                names.append(response.file.name)
        return names

    def download(self, payload_id: uuid.UUID, name: str, destination: Path) -> None:
        """Stream one payload file to ``destination`` (written whole or not at all)."""
        request = payloads_pb2.PayloadsDownloadRequest(
            header=_HEADER, payload_id=_id(payload_id), name=name
        )
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        method = f"Payloads.Download {name}"
        try:
            with partial.open("wb") as out:
                for response in self._stream(method, self._payloads.Download, request):
                    _check(method, response.header)
                    out.write(response.data)
            partial.replace(destination)
        except PlatformApiError:
            partial.unlink(missing_ok=True)  # a refused or broken download leaves nothing
            raise

    def create_job(self, pipeline_id: uuid.UUID, name: str, inputs: list[uuid.UUID]) -> uuid.UUID:
        """Create a job of a pipeline with the given input payloads."""
        request = jobs_pb2.JobsCreateRequest(
            header=_HEADER,
            pipeline_id=_id(pipeline_id),
            name=name,
            priority=jobs_pb2.JOB_PRIORITY_NORMAL,
            input_payloads=[_id(p) for p in inputs],
        )
        response = self._unary("Jobs.Create", self._jobs.Create, request)
        assert isinstance(response, jobs_pb2.JobsCreateResponse)
        _check("Jobs.Create", response.header)
        return uuid.UUID(response.job_id.value)

    def start_job(self, job_id: uuid.UUID) -> None:
        """Start a created job."""
        request = jobs_pb2.JobsStartRequest(header=_HEADER, job_id=_id(job_id))
        response = self._unary("Jobs.Start", self._jobs.Start, request)
        assert isinstance(response, jobs_pb2.JobsStartResponse)
        _check("Jobs.Start", response.header)

    def cancel_job(self, job_id: uuid.UUID, reason: str) -> None:
        """Cancel a job."""
        request = jobs_pb2.JobsCancelRequest(header=_HEADER, job_id=_id(job_id), reason=reason)
        response = self._unary("Jobs.Cancel", self._jobs.Cancel, request)
        assert isinstance(response, jobs_pb2.JobsCancelResponse)
        _check("Jobs.Cancel", response.header)

    def job_status(self, job_id: uuid.UUID) -> JobStatus:
        """The job's state and its operators' states."""
        request = jobs_pb2.JobsStatusRequest(header=_HEADER, job_id=_id(job_id))
        response = self._unary("Jobs.Status", self._jobs.Status, request)
        assert isinstance(response, jobs_pb2.JobsStatusResponse)
        _check("Jobs.Status", response.header)
        return JobStatus(
            job_id=job_id,
            name=response.name,
            state=jobs_pb2.JobState.Name(response.state).removeprefix("JOB_STATE_"),
            status=jobs_pb2.JobStatus.Name(response.status).removeprefix("JOB_STATUS_"),
            payload_id=uuid.UUID(response.payload_id.value),
            operators=tuple(
                OperatorStatus(
                    o.name,
                    jobs_pb2.JobOperatorStatus.Name(o.status).removeprefix("JOB_OPERATOR_STATUS_"),
                )
                for o in response.operator_details
            ),
            messages=tuple(response.messages),
        )

    def list_jobs(self) -> list[jobs_pb2.JobsListResponse.JobDetails]:
        """Every job the platform knows."""
        request = jobs_pb2.JobsListRequest(header=_HEADER)
        details = []
        for response in self._stream("Jobs.List", self._jobs.List, request):
            _check("Jobs.List", response.header)
            if response.HasField("job_details"):
                details.append(response.job_details)
        return details

    def list_pipelines(self) -> list[pipelines_pb2.PipelinesListResponse.PipelineDetails]:
        """Every pipeline the platform knows."""
        request = pipelines_pb2.PipelinesListRequest(header=_HEADER)
        details = []
        for response in self._stream("Pipelines.List", self._pipelines.List, request):
            _check("Pipelines.List", response.header)
            if response.HasField("details"):
                details.append(response.details)
        return details

    def read_logs(self, job_id: uuid.UUID, operator: str) -> list[str]:
        """The log lines of one operator of a job."""
        request = jobs_pb2.JobsReadLogsRequest(
            header=_HEADER, job_id=_id(job_id), operator_name=operator
        )
        lines: list[str] = []
        for response in self._stream("Jobs.ReadLogs", self._jobs.ReadLogs, request):
            _check("Jobs.ReadLogs", response.header)
            lines.extend(response.logs)
        return lines
