"""Client-streaming calls: telling a request stream the client finished from one it abandoned.

gRPC ends the request iterator of a client-streaming handler alike when the client
half-closes its stream (it sent everything) and when the call is cancelled or its connection
is lost, and the cancellation may reach the handler only later. A handler that stores what
the stream carried (``Payloads.Upload``, ``Models.UploadModel``) asks :func:`client_finished`
before it commits anything, and logs why an upload ended without storing anything
(:func:`why_it_ended`).
"""

from __future__ import annotations

import asyncio

from server_mock._errors import ApiError, StorageError
from server_mock._platform_api.responses import Context

__all__ = ["CLIENT_WENT_AWAY", "client_finished", "why_it_ended"]

CLIENT_WENT_AWAY = "the client went away before the end of its stream"


async def client_finished(context: Context) -> bool:
    """Whether the client ended its request stream itself (rather than going away).

    Once the call is cancelled or its connection lost, the call is closed in gRPC's core and
    any operation on it fails: sending the (empty) initial metadata tells the two apart. Call
    it once per call, after the request stream ended and before anything is committed.

    Args:
        context: The call's context.

    Returns:
        True when the call is still open (the client half-closed its stream); False when it
        is over (cancelled, or its connection lost).
    """
    try:
        await context.send_initial_metadata(())
    except Exception:  # grpc.aio's internal ExecuteBatchError: the call is over
        return False
    return True


def why_it_ended(error: BaseException) -> str:
    """How an upload that ``error`` cut short ended, for the log line that says so."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled: by the client, a lost connection or the server stopping"
    if isinstance(error, ApiError):
        return f"refused: {error}"
    if isinstance(error, StorageError):
        return f"not saved: {error}"
    return f"failed: {error}"
