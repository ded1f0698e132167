"""Errors of the mock's Clara Platform API: a platform result code, messages and a gRPC status.

Stores and request validators raise :class:`ApiError`; the servicers in
:mod:`server_mock._platform_api` turn it into a ``ResponseHeader`` with a negative ``code`` and
the error's messages (see that module for the convention and why).
"""

from __future__ import annotations

import enum

import grpc

__all__ = ["ApiError", "ErrorCode"]


class ErrorCode(enum.IntEnum):
    """The negative ``ResponseHeader.code`` values the mock answers with.

    The high bits name the service (``0x1000`` pipelines, ``0x2000`` jobs, ``0x3000``
    payloads), the next ones the kind of problem (``0x_0__`` identity, ``0x_1__`` request
    content, ``0x_2__`` metadata).
    """

    INTERNAL = -0x0001
    UNSUPPORTED = -0x0002

    INVALID_PIPELINE_ID = -0x1000
    PIPELINE_NOT_FOUND = -0x1001
    PIPELINE_EXISTS = -0x1002
    INVALID_DEFINITION = -0x1100
    INVALID_PIPELINE_REQUEST = -0x1101
    INVALID_PIPELINE_METADATA = -0x1200

    INVALID_JOB_ID = -0x2000
    JOB_NOT_FOUND = -0x2001
    JOB_NOT_STARTABLE = -0x2002
    JOB_LAUNCH_FAILED = -0x2003
    INVALID_JOB_NAME = -0x2100
    INVALID_JOB_PRIORITY = -0x2101
    INVALID_JOB_VARIABLES = -0x2102
    INVALID_JOB_FILTER = -0x2103
    UNKNOWN_OPERATOR = -0x2104
    INVALID_JOB_INPUTS = -0x2105
    INVALID_JOB_REQUEST = -0x2106
    INVALID_JOB_METADATA = -0x2200

    INVALID_PAYLOAD_ID = -0x3000
    PAYLOAD_NOT_FOUND = -0x3001
    PAYLOAD_READ_ONLY = -0x3002
    PAYLOAD_IN_USE = -0x3003
    FILE_NOT_FOUND = -0x3004
    FILE_EXISTS = -0x3005
    INVALID_BLOB_NAME = -0x3100
    INVALID_UPLOAD = -0x3101
    INVALID_PAYLOAD_METADATA = -0x3200


_STATUS = {
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.PIPELINE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PIPELINE_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_NOT_STARTABLE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.JOB_LAUNCH_FAILED: grpc.StatusCode.INTERNAL,
    ErrorCode.UNKNOWN_OPERATOR: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_READ_ONLY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.PAYLOAD_IN_USE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.FILE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FILE_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
}


class ApiError(Exception):
    """A request the platform refuses: a result code and human-readable messages.

    Args:
        code: The platform result code (negative).
        messages: What is wrong; at least one message.

    Attributes:
        code: The platform result code.
        messages: What is wrong.
    """

    def __init__(self, code: ErrorCode, *messages: str) -> None:
        if not messages:
            raise ValueError("an ApiError needs at least one message")
        super().__init__("; ".join(messages))
        self.code = code
        self.messages = messages

    @property
    def status(self) -> grpc.StatusCode:
        """The gRPC status that describes the error (``INVALID_ARGUMENT`` unless more precise)."""
        return _STATUS.get(self.code, grpc.StatusCode.INVALID_ARGUMENT)
