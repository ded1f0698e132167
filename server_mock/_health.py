"""The gRPC health service, with ``Health/List`` answered (grpcio's aio servicer lacks it).

grpcio-health-checking's asyncio servicer implements ``Check`` and ``Watch`` but inherits the
generated ``List``, which answers UNIMPLEMENTED and logs a ``NotImplementedError`` traceback
for every call. :class:`HealthService` keeps the statuses it is given and lists them.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from grpc_health.v1 import health, health_pb2

__all__ = ["HealthService"]

_ServingStatus: TypeAlias = (
    int  # health_pb2.HealthCheckResponse.ServingStatus (grpc_health is untyped)
)


class HealthService(health.aio.HealthServicer):  # type: ignore[misc, name-defined]  # untyped
    """``grpc.health.v1.Health``: Check, Watch and List over the statuses set on it."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, _ServingStatus] = {"": health_pb2.HealthCheckResponse.SERVING}

    async def set(self, service: str, status: _ServingStatus) -> None:
        """Set the status of ``service`` (``""`` is the whole server)."""
        await super().set(service, status)
        self._statuses[service] = status

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every service's status, as ``Check`` would answer it."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )
