"""The one gRPC-status mapping keeps what gRPC said: the original error is the ``__cause__``."""

from __future__ import annotations

import traceback

import grpc
import pytest

import clara
from clara._exceptions import from_grpc_error


class FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]  # grpc-stubs: abstract Call
    """What a gRPC stub raises: an RpcError that is also a Call, with a code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, clara.PlatformUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, clara.DeadlineExceededError),
        (grpc.StatusCode.NOT_FOUND, clara.NotFoundError),
        (grpc.StatusCode.PERMISSION_DENIED, clara.PermissionDeniedError),
        (grpc.StatusCode.INTERNAL, clara.PlatformError),
    ],
)
def test_the_mapped_error_keeps_the_rpc_error_as_its_cause(
    code: grpc.StatusCode, expected: type[clara.PlatformError]
) -> None:
    original = FailedCall(code, "what the server said")
    converted = from_grpc_error("WatchStage", original)
    assert type(converted) is expected
    assert converted.__cause__ is original
    assert (converted.code, converted.details) == (code, "what the server said")
    # Raised the way the link raises it, the traceback still shows gRPC's own error.
    with pytest.raises(expected) as raised:
        raise converted from original
    assert raised.value.__cause__ is original
    shown = "".join(traceback.format_exception(raised.value))
    assert "FailedCall: what the server said" in shown
    assert "direct cause of the following exception" in shown
