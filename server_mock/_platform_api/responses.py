"""The one path from a refused request to its answer: a ``ResponseHeader`` and a status trailer.

Every servicer method is wrapped by :func:`unary_rpc` (one answer, whether the request is one
message or a stream) or :func:`streaming_rpc` (a stream of answers). Inside, a method raises
:class:`~server_mock._errors.ApiError` for a request the platform refuses; the wrapper logs it,
sets the trailing metadata ``clara-status-code`` to the equivalent gRPC status name and answers
with a message whose header carries the negative code and the error's messages (a stream ends
with that message). A :class:`~server_mock._errors.StorageError` (the state file could not be
written; the change was undone) is answered with the service's documented store error
(``store_error`` of :func:`unary_rpc`, else the servicer's ``store_error`` attribute).
:func:`abort` is the same path for the one RPC that answers errors with a gRPC status instead
(``Jobs.ReadLogs``, see the package docstring).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, NoReturn, Protocol, TypeAlias, TypeVar

import grpc

from server_mock._errors import ApiError, ErrorCode, StorageError
from server_mock._proto.nvidia.clara.platform import common_pb2

__all__ = ["STATUS_TRAILER", "Context", "abort", "ok", "refused", "streaming_rpc", "unary_rpc"]

_log = logging.getLogger("server_mock.api")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

STATUS_TRAILER: Final = "clara-status-code"
"""Trailing metadata key carrying the gRPC status name equivalent to a refusal."""


class _Answer(Protocol):
    """A response message: every Platform API response has a ``header``."""

    def __init__(self, *, header: common_pb2.ResponseHeader | None = ...) -> None: ...


_Self = TypeVar("_Self")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response", bound=_Answer)


def ok(messages: Iterable[str] = ()) -> common_pb2.ResponseHeader:
    """The header of a successful answer (code 0), with optional ``messages`` (warnings)."""
    return common_pb2.ResponseHeader(code=0, messages=list(messages))


def _label(method: Callable[..., Any]) -> str:
    """``PipelinesService.Create`` -> ``Pipelines.Create``, for logs."""
    return method.__qualname__.replace("Service.", ".", 1)


def refused(context: Context, method: str, error: ApiError) -> common_pb2.ResponseHeader:
    """Log a refused request, set the status trailer, and return the error header.

    Args:
        context: The call's context (for the trailer).
        method: ``Service.Method``, for the log.
        error: Why the request is refused.
    """
    _log.info("%s refused (%s): %s", method, error.code.name, error)
    context.set_trailing_metadata(((STATUS_TRAILER, error.status.name),))
    return common_pb2.ResponseHeader(code=int(error.code), messages=list(error.messages))


async def abort(context: Context, method: str, error: ApiError) -> NoReturn:
    """End the call with the gRPC status of ``error`` (its messages as details).

    Raises:
        grpc.aio.AbortError: Always (that is how a grpc.aio handler aborts).
    """
    refused(context, method, error)
    await context.abort(
        error.status, "\n".join(error.messages), ((STATUS_TRAILER, error.status.name),)
    )
    raise AssertionError("unreachable: abort raises")


def _storage_refusal(servicer: object, code: ErrorCode | None, error: StorageError) -> ApiError:
    chosen: ErrorCode = (
        getattr(servicer, "store_error", ErrorCode.INTERNAL) if code is None else code
    )
    return ApiError(chosen, f"the mock could not save the change, so it made none: {error}")


def unary_rpc(
    response: type[_Response], *, store_error: ErrorCode | None = None
) -> Callable[
    [Callable[[_Self, _Request, Context], Awaitable[_Response]]],
    Callable[[_Self, _Request, Context], Awaitable[_Response]],
]:
    """Wrap a method with one answer: an :class:`ApiError` becomes ``response(header=...)``.

    Args:
        response: The method's response message type.
        store_error: The code of a failed save (default: the servicer's ``store_error``).
    """

    def decorate(
        method: Callable[[_Self, _Request, Context], Awaitable[_Response]],
    ) -> Callable[[_Self, _Request, Context], Awaitable[_Response]]:
        label = _label(method)

        @functools.wraps(method)
        async def answer(self: _Self, request: _Request, context: Context) -> _Response:
            try:
                return await method(self, request, context)
            except ApiError as error:
                return response(header=refused(context, label, error))
            except StorageError as error:
                _log.error("%s: %s", label, error)
                failure = _storage_refusal(self, store_error, error)
                return response(header=refused(context, label, failure))

        return answer

    return decorate


def streaming_rpc(
    response: type[_Response],
) -> Callable[
    [Callable[[_Self, _Request, Context], AsyncIterator[_Response]]],
    Callable[[_Self, _Request, Context], AsyncIterator[_Response]],
]:
    """Wrap a streaming method: an :class:`ApiError` ends the stream with an error message."""

    def decorate(
        method: Callable[[_Self, _Request, Context], AsyncIterator[_Response]],
    ) -> Callable[[_Self, _Request, Context], AsyncIterator[_Response]]:
        label = _label(method)

        @functools.wraps(method)
        async def answer(
            self: _Self, request: _Request, context: Context
        ) -> AsyncIterator[_Response]:
            try:
                async for message in method(self, request, context):
                    yield message
            except ApiError as error:
                yield response(header=refused(context, label, error))

        return answer

    return decorate
