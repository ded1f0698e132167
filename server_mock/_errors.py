"""Errors of the mock's Clara Platform API: a platform result code, messages and a gRPC status.

Stores and request validators raise :class:`ApiError`; the servicers in
:mod:`server_mock._platform_api` turn it into a ``ResponseHeader`` with a negative ``code`` and
the error's messages (see that package for the convention and why). A store whose write to the
state file fails raises :class:`StorageError`, which the servicers answer with the documented
store error of their service.
"""

from __future__ import annotations

import enum

import grpc

__all__ = ["DOCUMENTED_CODES", "ApiError", "ErrorCode", "StorageError"]


class ErrorCode(enum.IntEnum):
    """The negative ``ResponseHeader.code`` values the mock answers with.

    The codes the Clara Deploy SDK documents ("RPC Error Codes", 0.7.x and 0.8.x: pipelines
    in -[0x1000, 0x1999], jobs in -[0x2000, 0x2999]) have exactly their documented value and
    meaning (:data:`DOCUMENTED_CODES`). Every other code is the mock's own: within its
    service's range (payloads -0x3___ and models -0x4___, which the docs give no codes)
    with the bit ``0x800`` set, so it can never be mistaken for a documented code; the two
    generic codes (-0x0001, -0x0002) lie outside every service range.
    """

    INTERNAL = -0x0001
    UNSUPPORTED = -0x0002

    # Pipelines: documented.
    INVALID_PIPELINE_ID = -0x1000
    PIPELINE_NOT_FOUND = -0x1001
    PIPELINE_STORE_ERROR = -0x1002
    PIPELINE_LIST_ERROR = -0x1003
    PIPELINE_UPDATE_ERROR = -0x1004
    PIPELINE_DEFINITION_ERROR = -0x1100
    PIPELINE_LOAD_ERROR = -0x1101
    # Pipelines: the mock's own.
    PIPELINE_EXISTS = -0x1800
    INVALID_PIPELINE_METADATA = -0x1801

    # Jobs: documented.
    INVALID_JOB_ID = -0x2000
    JOB_NOT_FOUND = -0x2001
    JOB_STORE_ERROR = -0x2002
    JOB_LIST_ERROR = -0x2003
    INVALID_JOB_NAME = -0x2100
    # Jobs: the mock's own.
    JOB_NOT_STARTABLE = -0x2800
    JOB_LAUNCH_FAILED = -0x2801
    INVALID_JOB_PRIORITY = -0x2802
    INVALID_JOB_VARIABLES = -0x2803
    INVALID_JOB_FILTER = -0x2804
    UNKNOWN_OPERATOR = -0x2805
    INVALID_JOB_INPUTS = -0x2806
    INVALID_JOB_REQUEST = -0x2807
    INVALID_JOB_METADATA = -0x2808
    JOB_EXCEEDS_CAPACITY = -0x2810

    # Payloads: the mock's own (the docs give none).
    INVALID_PAYLOAD_ID = -0x3800
    PAYLOAD_NOT_FOUND = -0x3801
    PAYLOAD_READ_ONLY = -0x3802
    PAYLOAD_IN_USE = -0x3803
    FILE_NOT_FOUND = -0x3804
    FILE_EXISTS = -0x3805
    INVALID_BLOB_NAME = -0x3806
    INVALID_UPLOAD = -0x3807
    INVALID_PAYLOAD_METADATA = -0x3808
    PAYLOAD_STORE_ERROR = -0x3809

    # Models: the mock's own (the docs give none).
    INVALID_MODEL_ID = -0x4800
    MODEL_NOT_FOUND = -0x4801
    INVALID_CATALOG_ID = -0x4802
    CATALOG_NOT_FOUND = -0x4803
    INVALID_INSTANCE_ID = -0x4804
    INSTANCE_NOT_FOUND = -0x4805
    INVALID_MODEL = -0x4806
    INVALID_MODEL_METADATA = -0x4807
    MODEL_STORE_ERROR = -0x4808


DOCUMENTED_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_PIPELINE_ID: "Invalid Pipeline ID",
    ErrorCode.PIPELINE_NOT_FOUND: "Missing/Invalid Pipeline",
    ErrorCode.PIPELINE_STORE_ERROR: "Pipeline Store Error",
    ErrorCode.PIPELINE_LIST_ERROR: "Pipeline List Error",
    ErrorCode.PIPELINE_UPDATE_ERROR: "Pipeline Update Error",
    ErrorCode.PIPELINE_DEFINITION_ERROR: "Pipeline Definition Error",
    ErrorCode.PIPELINE_LOAD_ERROR: "Pipeline Load Error",
    ErrorCode.INVALID_JOB_ID: "Invalid Job ID",
    ErrorCode.JOB_NOT_FOUND: "Missing/Invalid Job",
    ErrorCode.JOB_STORE_ERROR: "Job Store Error",
    ErrorCode.JOB_LIST_ERROR: "Jobs List Error",
    ErrorCode.INVALID_JOB_NAME: "Invalid Job Name",
}
"""The codes of the docs' error-code tables, with the name the docs give each."""

_STATUS = {
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.PIPELINE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PIPELINE_STORE_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.PIPELINE_LIST_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.PIPELINE_UPDATE_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.PIPELINE_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_STORE_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.JOB_LIST_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.JOB_NOT_STARTABLE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.JOB_LAUNCH_FAILED: grpc.StatusCode.INTERNAL,
    ErrorCode.JOB_EXCEEDS_CAPACITY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNKNOWN_OPERATOR: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_READ_ONLY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.PAYLOAD_IN_USE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.PAYLOAD_STORE_ERROR: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.FILE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FILE_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.CATALOG_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.INSTANCE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.MODEL_STORE_ERROR: grpc.StatusCode.UNAVAILABLE,
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


class StorageError(Exception):
    """Saving a change to the state file failed; the change was undone (nothing is stored)."""
