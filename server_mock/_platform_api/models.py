"""``nvidia.clara.platform.Models``: not served yet; every RPC ends with ``UNIMPLEMENTED``."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from server_mock._platform_api.responses import Context
from server_mock._proto.nvidia.clara.platform import models_pb2

__all__ = ["MODELS_SERVICE", "unimplemented_service"]

MODELS_SERVICE: ServiceDescriptor = models_pb2.DESCRIPTOR.services_by_name["Models"]


def unimplemented_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler answering every RPC of ``service`` with ``UNIMPLEMENTED``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        details = (
            f"the mock platform does not implement {service.name}.{method.name} "
            "(the Models service is not served)"
        )

        async def refuse(_request: object, context: Context, details: str = details) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)

        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(refuse)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(refuse)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(refuse)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(refuse)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
