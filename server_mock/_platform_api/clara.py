"""``nvidia.clara.platform.Clara``: the platform's version and utilization; stop is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from server_mock._errors import ApiError, ErrorCode
from server_mock._platform_api.responses import Context, ok, streaming_rpc, unary_rpc
from server_mock._proto.nvidia.clara.platform import clara_pb2, clara_pb2_grpc, common_pb2

__all__ = ["PLATFORM_VERSION", "UTILIZATION_INTERVAL", "ClaraService"]

PLATFORM_VERSION: Final = common_pb2.Version(major=0, minor=8, patch=1, label="mock")
"""What ``Clara.Version`` answers: the API generation the published 0.8.x clients expect."""

UTILIZATION_INTERVAL: Final = 1.0
"""Seconds between two samples of a watched ``Clara.Utilization`` stream."""


class ClaraService(clara_pb2_grpc.ClaraServicer):
    """``nvidia.clara.platform.Clara``: version, utilization; stop is refused.

    Args:
        stopping: Set when the server stops: watched utilization streams end then (without
            it they end only when the caller cancels).
        interval: Seconds between two samples of a watched stream.
    """

    def __init__(
        self, stopping: asyncio.Event | None = None, interval: float = UTILIZATION_INTERVAL
    ) -> None:
        self._stopping = stopping or asyncio.Event()
        self._interval = interval

    @unary_rpc(clara_pb2.ClaraStopResponse)
    async def Stop(
        self, request: clara_pb2.ClaraStopRequest, context: Context
    ) -> clara_pb2.ClaraStopResponse:
        """Refuse: a client must not shut the mock down (see the package docstring)."""
        raise ApiError(
            ErrorCode.UNSUPPORTED,
            "the mock platform does not stop on request: stop the process that runs it "
            "(Ctrl-C for the CLI, MockPlatform.stop() in tests)",
        )

    @streaming_rpc(clara_pb2.ClaraUtilizationResponse)
    async def Utilization(
        self, request: clara_pb2.ClaraUtilizationRequest, context: Context
    ) -> AsyncIterator[clara_pb2.ClaraUtilizationResponse]:
        """Send a sample now; with ``watch``, one more every interval until the caller cancels.

        The mock manages no GPUs, so a sample lists none. A watched stream also ends (OK)
        when the server stops.
        """
        yield clara_pb2.ClaraUtilizationResponse(header=ok())
        while request.watch:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            except TimeoutError:
                yield clara_pb2.ClaraUtilizationResponse(header=ok())
            else:
                return

    @unary_rpc(clara_pb2.ClaraVersionResponse)
    async def Version(
        self, request: clara_pb2.ClaraVersionRequest, context: Context
    ) -> clara_pb2.ClaraVersionResponse:
        """Return :data:`PLATFORM_VERSION`."""
        return clara_pb2.ClaraVersionResponse(header=ok(), version=PLATFORM_VERSION)
