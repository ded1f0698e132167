"""Answer undecodable requests with ``INVALID_ARGUMENT`` instead of ``UNKNOWN`` and a traceback.

gRPC decodes a request before any servicer sees it; bytes that are not a valid message (a
corrupt or hostile client) make the aio server log a traceback and end the call with
``UNKNOWN``. :class:`RequestGuard` (a server interceptor) wraps every handler's decoder so that
such a request ends with ``INVALID_ARGUMENT`` naming the message type, before the servicer
runs, so nothing changes. Streaming requests are checked message by message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["RequestGuard"]

_log = logging.getLogger("server_mock.guard")


class _Undecodable:
    """Stands in for a request that could not be decoded."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoder(decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if decode is None:
        return None

    def safe(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as error:  # any decoding failure is the client's fault
            return _Undecodable(f"{type(error).__name__}: {error}"[:300])

    return safe


async def _refuse(method: str, bad: _Undecodable, context: Any) -> None:
    _log.info("%s: undecodable request refused (%s)", method, bad.reason)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request: not a valid request message for {method} ({bad.reason})",
    )


def _checked(method: str, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async def check() -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await _refuse(method, request, context)
            yield request

    return check()


async def _run(behavior: Callable[..., Any], request: Any, context: Any) -> AsyncIterator[Any]:
    """Run a streaming behavior that is an async generator, or a coroutine writing itself."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result


def _is_async(behavior: Callable[..., Any] | None) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _guard(method: str, handler: Any) -> Any:
    behaviors = (
        handler.unary_unary,
        handler.unary_stream,
        handler.stream_unary,
        handler.stream_stream,
    )
    if not any(_is_async(b) for b in behaviors):
        return _guard_sync(method, handler)
    decode = _decoder(handler.request_deserializer)
    encode = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for response in _run(inner_ss, _checked(method, requests, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode)
    if handler.request_streaming:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
            return await inner_su(_checked(method, requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, decode, encode)
    if handler.response_streaming:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse(method, request, context)
            async for response in _run(inner_us, request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode)
    inner_uu = handler.unary_unary

    async def unary_unary(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(method, request, context)
        return await inner_uu(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode)


def _guard_sync(method: str, handler: Any) -> Any:
    """Guard a synchronous behavior that takes one request (e.g. ``Health/List``).

    The aio server runs a synchronous behavior on an executor thread; the guarded one does the
    same once the request decoded. Synchronous behaviors that read a request stream are left
    as they are: none is served.
    """
    if handler.request_streaming:
        return handler
    decode = _decoder(handler.request_deserializer)
    encode = handler.response_serializer
    if handler.response_streaming:
        return handler  # no synchronous server-streaming behavior is served either
    inner = handler.unary_unary

    async def unary_unary(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(method, request, context)
        return await asyncio.get_running_loop().run_in_executor(None, inner, request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode)


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # untyped generic
    """Refuses undecodable requests with ``INVALID_ARGUMENT`` (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap the handler of the call, if there is one."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _guard(handler_call_details.method, handler)
