"""The exception hierarchy of the ``clara`` package, and the one gRPC-status mapping.

Callers catch these types, never ``grpc.RpcError``: every failed call to the platform is
converted once, by :func:`from_grpc_error`, at the edge where the call is made; the converted
error keeps the original ``grpc.RpcError`` as its ``__cause__`` (as python-api-core's
``from_grpc_error`` keeps it), so a traceback still shows what gRPC said.

``Error`` is the name NVIDIA's Clara Pipeline Driver binding gives its exception type
(``from clara import Error``); here it is the same class as :class:`ClaraError`, the root of
the hierarchy, so ``except clara.Error`` catches everything the package raises.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyCompletedError",
    "ClaraError",
    "ConfigurationError",
    "ContextUnavailableError",
    "DeadlineExceededError",
    "DriverStateError",
    "Error",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlatformError",
    "PlatformUnavailableError",
    "UnauthenticatedError",
    "WaitTimeoutError",
    "from_grpc_error",
]


class ClaraError(Exception):
    """Base class of every error raised by the ``clara`` package (also named ``clara.Error``)."""


Error = ClaraError
"""The Clara Pipeline Driver binding's name for the root of the hierarchy: ``clara.Error`` is
:class:`ClaraError` (one class, two names), so operators written for NVIDIA's binding
(``from clara import Driver, Error, Payload``) import and catch it unchanged."""


class ConfigurationError(ClaraError):
    """A driver setting is missing or malformed.

    Attributes:
        setting: The argument or environment variable that holds the bad value.
        value: The bad value as given (``None`` when the setting is missing).
    """

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        shown = "not set" if value is None else f"{value!r}"
        super().__init__(f"{setting} ({shown}): {reason}")


class DriverStateError(ClaraError):
    """A driver method was called in a state that does not allow it (e.g. ``start()`` twice)."""


class WaitTimeoutError(DriverStateError, TimeoutError):
    """``wait_for_completion(timeout)`` gave up before the life-cycle ended."""


class ContextUnavailableError(DriverStateError):
    """A stage-context property was read before the driver received the stage context."""


class PlatformError(ClaraError):
    """A call to the platform failed.

    Attributes:
        code: The gRPC status code of the failed call.
        details: The status details the server sent.
        method: The RPC that failed, e.g. ``"GetStageContext"``.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method} failed with {code.name}: {details}")


class PlatformUnavailableError(PlatformError):
    """The platform could not be reached (UNAVAILABLE, RESOURCE_EXHAUSTED): transient."""


class DeadlineExceededError(PlatformError):
    """The call did not finish before its deadline (DEADLINE_EXCEEDED)."""


class NotFoundError(PlatformError):
    """The job or stage the driver names is unknown to the platform (NOT_FOUND)."""


class InvalidArgumentError(PlatformError):
    """The platform rejected the request's content (INVALID_ARGUMENT, OUT_OF_RANGE)."""


class AlreadyCompletedError(PlatformError):
    """The stage is not in a state that allows the call (FAILED_PRECONDITION, ABORTED)."""


class UnauthenticatedError(PlatformError):
    """The call carried no valid credentials (UNAUTHENTICATED)."""


class PermissionDeniedError(PlatformError):
    """The credentials do not allow the call (PERMISSION_DENIED)."""


_BY_CODE: dict[grpc.StatusCode, type[PlatformError]] = {
    grpc.StatusCode.UNAVAILABLE: PlatformUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PlatformUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: AlreadyCompletedError,
    grpc.StatusCode.ABORTED: AlreadyCompletedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def from_grpc_error(method: str, error: grpc.RpcError) -> PlatformError:
    """Convert a failed gRPC call into the matching :class:`PlatformError` subclass.

    Args:
        method: The RPC's short name, used in the error message.
        error: The error raised by a gRPC stub (it is also a ``grpc.Call``).

    Returns:
        The converted error, with ``error`` as its ``__cause__``; codes without a dedicated
        subclass give a plain ``PlatformError``. Raise it ``from error`` (or re-raise it as
        is): ``raise ... from None`` would drop the cause again.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else str(error)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    converted = _BY_CODE.get(code, PlatformError)(method, code, details or "")
    converted.__cause__ = error
    return converted
