"""The public (legacy) Clara Platform API served by the mock, one module per service.

Clara, Pipelines, Jobs, Payloads and Models, wire-compatible with the published
``nvidia-clara-client`` 0.8.1.7. The servicers run on the mock's event loop and work on
:class:`~server_mock._platform_state.PlatformState`; :func:`add_platform_api_to_server` is the
one entry point. What the mock does, its limits and its codes: docs/platform-api.md.

Error convention
----------------
A refused request is answered like the real platform does: gRPC status OK and a response whose
``ResponseHeader.code`` is negative (:class:`~server_mock._errors.ErrorCode`) with the reasons
in ``ResponseHeader.messages``. The published client checks that header after every call and
raises ``Exception("<messages joined by newlines>")``, a readable error; a non-OK gRPC status
would instead surface as a raw ``grpc.RpcError`` before the client ever looks at the header.
For callers that prefer gRPC terms, the equivalent status name (``NOT_FOUND``,
``INVALID_ARGUMENT``, ...) is also sent as trailing metadata ``clara-status-code``. Streaming
RPCs answer an error with a single message carrying the error header. One helper does this for
every RPC (:mod:`server_mock._platform_api.responses`).

One exception, chosen so that the published client raises:

* ``Jobs.ReadLogs``: the client never reads the response headers, so an error header would
  silently become an empty log. ReadLogs errors abort the call with a gRPC status instead
  (``INVALID_ARGUMENT``/``NOT_FOUND``; details carry the message, trailing metadata the code).

``Clara.Stop`` is refused with code ``UNSUPPORTED``: a mock serving tests must not be shut
down by a client; stop it from the process that runs it. ``Clara.Utilization`` sends samples
without GPUs (the mock manages none): one, or with ``watch`` one a second until the caller
cancels (or the server stops).

Identifiers, timestamps and the job state mapping: :mod:`server_mock._platform_api.convert`;
the limits: :mod:`server_mock._platform_api.limits`.
"""

from __future__ import annotations

import asyncio

import grpc

from server_mock._platform_api.clara import ClaraService
from server_mock._platform_api.jobs import JobsService
from server_mock._platform_api.limits import DEFAULT_MAX_UPLOAD_BYTES
from server_mock._platform_api.models import ModelsService
from server_mock._platform_api.payloads import PayloadsService
from server_mock._platform_api.pipelines import PipelinesService
from server_mock._platform_state import PlatformState
from server_mock._proto.nvidia.clara.platform import (
    clara_pb2,
    clara_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "add_platform_api_to_server"]


def add_platform_api_to_server(
    server: grpc.aio.Server,
    state: PlatformState,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    stopping: asyncio.Event | None = None,
) -> list[str]:
    """Serve the Clara, Pipelines, Jobs, Payloads and Models services.

    Args:
        server: The server to add the services to.
        state: The platform's state the services work on.
        max_upload_bytes: The size limit of one uploaded file (or model archive).
        stopping: Set it when the server stops, to end open watch streams at once.

    Returns:
        The services' full names, for reflection and health checking.
    """
    clara_pb2_grpc.add_ClaraServicer_to_server(ClaraService(stopping), server)
    pipelines_pb2_grpc.add_PipelinesServicer_to_server(PipelinesService(state), server)
    jobs_pb2_grpc.add_JobsServicer_to_server(JobsService(state), server)
    payloads_pb2_grpc.add_PayloadsServicer_to_server(
        PayloadsService(state, max_upload_bytes), server
    )
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsService(state, max_upload_bytes), server)
    return [
        clara_pb2.DESCRIPTOR.services_by_name["Clara"].full_name,
        pipelines_pb2.DESCRIPTOR.services_by_name["Pipelines"].full_name,
        jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
        payloads_pb2.DESCRIPTOR.services_by_name["Payloads"].full_name,
        models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    ]
