"""``nvidia.clara.platform.Payloads`` over :attr:`PlatformState.payloads`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

from server_mock._errors import ApiError, ErrorCode
from server_mock._payloads import CHUNK_SIZE, FileInfo, PayloadRecord, PayloadType
from server_mock._payloads import Upload as FileUpload
from server_mock._platform_api.convert import identifier, parse_identifier, payload_type, show
from server_mock._platform_api.limits import DEFAULT_MAX_UPLOAD_BYTES
from server_mock._platform_api.metadata import edit_metadata
from server_mock._platform_api.responses import Context, ok, streaming_rpc, unary_rpc
from server_mock._platform_api.streams import CLIENT_WENT_AWAY, client_finished, why_it_ended
from server_mock._platform_state import PlatformState
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2, payloads_pb2_grpc

__all__ = ["PayloadsService"]

_log = logging.getLogger("server_mock.api")


def _parse_payload_id(value: common_pb2.Identifier) -> uuid.UUID:
    return parse_identifier(value, "payload id", ErrorCode.INVALID_PAYLOAD_ID)


def _file_details(info: FileInfo) -> payloads_pb2.PayloadFileDetails:
    return payloads_pb2.PayloadFileDetails(name=info.name, size=info.size, mode=info.mode)


def _reusable(record: PayloadRecord) -> str:
    """The payload's name for messages, once it is known to be reusable.

    Raises:
        ApiError: ``INVALID_PAYLOAD_METADATA``: the payload belongs to a job ("Metadata is
            only supported for reusable payloads", Payloads AddMetadata, 0.7.4 and 0.8.1).
    """
    owner = f"payload {record.payload_id.hex}"
    if record.type is not PayloadType.REUSABLE:
        raise ApiError(
            ErrorCode.INVALID_PAYLOAD_METADATA,
            f"{owner}, field metadata: the payload belongs to job "
            f"{record.job_id.hex if record.job_id else '?'}; only reusable payloads have "
            "metadata",
        )
    return owner


def _end(upload: FileUpload, ended: str) -> None:
    """Drop ``upload``'s temporary file; log it when the upload ended without its file."""
    removed = upload.abort()
    if ended:
        _log.info(
            "Payloads.Upload of %s into payload %s ended without storing it (%s, after %d "
            "bytes); %s",
            show(upload.name),
            upload.record.payload_id.hex,
            ended,
            upload.size,
            f"removed its temporary file {upload.temp_path}" if removed else "no temporary file",
        )


class PayloadsService(payloads_pb2_grpc.PayloadsServicer):
    """``nvidia.clara.platform.Payloads`` over :attr:`PlatformState.payloads`.

    Args:
        state: The platform's state.
        max_upload_bytes: The largest file an upload may write.
    """

    store_error: ClassVar[ErrorCode] = ErrorCode.PAYLOAD_STORE_ERROR

    def __init__(
        self, state: PlatformState, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    ) -> None:
        self._state = state
        self._max_upload_bytes = max_upload_bytes

    def _payload(self, value: common_pb2.Identifier) -> PayloadRecord:
        return self._state.payloads.get(_parse_payload_id(value))

    @unary_rpc(payloads_pb2.PayloadsCreateResponse)
    async def Create(
        self, request: payloads_pb2.PayloadsCreateRequest, context: Context
    ) -> payloads_pb2.PayloadsCreateResponse:
        """Create an empty reusable payload."""
        metadata = edit_metadata(
            {}, ErrorCode.INVALID_PAYLOAD_METADATA, "the new payload", add=request.metadata
        )
        record = self._state.payloads.create(PayloadType.REUSABLE, metadata=metadata)
        return payloads_pb2.PayloadsCreateResponse(
            header=ok(),
            payload_id=identifier(record.payload_id),
            type=payloads_pb2.PAYLOAD_TYPE_REUSABLE,
        )

    @streaming_rpc(payloads_pb2.PayloadsDetailsResponse)
    async def Details(
        self, request: payloads_pb2.PayloadsDetailsRequest, context: Context
    ) -> AsyncIterator[payloads_pb2.PayloadsDetailsResponse]:
        """One message per file, as the docs say; none for an empty payload.

        (A header-only message would be a file without a name to the published client, which
        turns every message into a file.)
        """
        record = self._payload(request.payload_id)
        for index, info in enumerate(self._state.payloads.files(record)):
            response = payloads_pb2.PayloadsDetailsResponse(
                header=ok(),
                payload_id=identifier(record.payload_id),
                type=payload_type(record.type),
                job_id=identifier(record.job_id),
                file=_file_details(info),
            )
            if index == 0:
                response.metadata.update(record.metadata)
            yield response

    @unary_rpc(payloads_pb2.PayloadsUploadResponse)
    async def Upload(
        self, request_iterator: AsyncIterator[payloads_pb2.PayloadsUploadRequest], context: Context
    ) -> payloads_pb2.PayloadsUploadResponse:
        """Write one file from its chunks; it appears only once complete.

        Every chunk names the payload and the file (the published client repeats them, and
        sends each chunk's own length as ``details.size``, which is therefore not checked).
        An upload that ends without its file (refused, cancelled, its connection lost, the
        server stopping) removes its temporary file before the call ends, and says so in the
        log.
        """
        upload: FileUpload | None = None
        ended = "it failed unexpectedly"
        first = False
        try:
            payload_id: uuid.UUID | None = None
            async for request in request_iterator:
                if upload is None:
                    payload_id = _parse_payload_id(request.payload_id)
                    record = self._state.payloads.get(payload_id)
                    self._state.check_payload_writable(record)
                    upload = self._state.payloads.begin_upload(record, request.details.name)
                    first = True
                else:
                    self._check_same_file(upload, payload_id, request)
                if upload.size + len(request.data) > self._max_upload_bytes:
                    raise ApiError(
                        ErrorCode.INVALID_UPLOAD,
                        f"data: file {show(upload.name)} is larger than the upload limit of "
                        f"{self._max_upload_bytes} bytes",
                    )
                upload.write(request.data)
                if first:
                    first = False
                    _log.info(
                        "Payloads.Upload: receiving %s of payload %s into %s (first chunk, %d "
                        "bytes, written)",
                        show(upload.name),
                        upload.record.payload_id.hex,
                        upload.temp_path,
                        upload.size,
                    )
            if upload is None or payload_id is None:
                # The published client sends no message at all for an empty file: accept the
                # stream (nothing names a payload or a file, so nothing is stored) and warn.
                _log.warning(
                    "Payloads.Upload: a stream without any message names no file; nothing "
                    "stored (an empty file is uploaded as one message without data)"
                )
                return payloads_pb2.PayloadsUploadResponse(header=ok())
            if not await client_finished(context):
                ended = CLIENT_WENT_AWAY
                return payloads_pb2.PayloadsUploadResponse(header=ok())  # nobody reads it
            # The payload may have been deleted, or its job started, while the chunks came in.
            if self._state.payloads.get(payload_id) is not upload.record:
                raise ApiError(ErrorCode.PAYLOAD_NOT_FOUND, f"payload {payload_id.hex} not found")
            self._state.check_payload_writable(upload.record)
            info = upload.commit()
            ended = ""
        except OSError as error:  # e.g. the disk is full
            ended = why_it_ended(error)
            _log.exception("Payloads.Upload failed")
            raise ApiError(
                ErrorCode.INTERNAL, f"the mock could not store the file: {error}"
            ) from error
        except BaseException as error:  # refused, cancelled, not saved: logged, then raised
            ended = why_it_ended(error)
            raise
        finally:
            if upload is not None:
                _end(upload, ended)
        return payloads_pb2.PayloadsUploadResponse(header=ok(), details=_file_details(info))

    @staticmethod
    def _check_same_file(
        upload: FileUpload,
        payload_id: uuid.UUID | None,
        request: payloads_pb2.PayloadsUploadRequest,
    ) -> None:
        """Refuse a chunk that names another payload or file than the first chunk."""
        if request.payload_id.value and _parse_payload_id(request.payload_id) != payload_id:
            raise ApiError(
                ErrorCode.INVALID_UPLOAD, "the chunks of one upload name different payloads"
            )
        if request.details.name and request.details.name != upload.name:
            raise ApiError(
                ErrorCode.INVALID_UPLOAD, "the chunks of one upload name different files"
            )

    @streaming_rpc(payloads_pb2.PayloadsDownloadResponse)
    async def Download(
        self, request: payloads_pb2.PayloadsDownloadRequest, context: Context
    ) -> AsyncIterator[payloads_pb2.PayloadsDownloadResponse]:
        """Stream a file in chunks of :data:`CHUNK_SIZE`; the first carries header and details."""
        record = self._payload(request.payload_id)
        info, handle = self._state.payloads.open_file(record, request.name)
        with handle:
            first = True
            while True:
                data = handle.read(CHUNK_SIZE)
                if not data and not first:
                    return
                response = payloads_pb2.PayloadsDownloadResponse(data=data)
                if first:
                    response.header.CopyFrom(ok())
                    response.details.CopyFrom(_file_details(info))
                    first = False
                yield response
                if not data:
                    return

    @unary_rpc(payloads_pb2.PayloadsRemoveResponse)
    async def Remove(
        self, request: payloads_pb2.PayloadsRemoveRequest, context: Context
    ) -> payloads_pb2.PayloadsRemoveResponse:
        """Delete one file (a job's payload only before the job starts)."""
        record = self._payload(request.payload_id)
        self._state.check_payload_writable(record)
        self._state.payloads.remove_file(record, request.name)
        return payloads_pb2.PayloadsRemoveResponse(header=ok())

    @unary_rpc(payloads_pb2.PayloadsDeleteResponse)
    async def Delete(
        self, request: payloads_pb2.PayloadsDeleteRequest, context: Context
    ) -> payloads_pb2.PayloadsDeleteResponse:
        """Delete a payload and its files (a job's payload only once the job has ended)."""
        record = self._payload(request.payload_id)
        self._state.check_payload_deletable(record)
        self._state.payloads.delete(record.payload_id)
        return payloads_pb2.PayloadsDeleteResponse(header=ok())

    @unary_rpc(payloads_pb2.PayloadsAddMetadataResponse)
    async def AddMetadata(
        self, request: payloads_pb2.PayloadsAddMetadataRequest, context: Context
    ) -> payloads_pb2.PayloadsAddMetadataResponse:
        """Add key/value pairs to a reusable payload's metadata."""
        record = self._payload(request.payload_id)
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_PAYLOAD_METADATA,
            _reusable(record),
            add=request.metadata,
        )
        self._state.payloads.set_metadata(record, metadata)
        return payloads_pb2.PayloadsAddMetadataResponse(
            header=ok(), payload_id=identifier(record.payload_id), metadata=record.metadata
        )

    @unary_rpc(payloads_pb2.PayloadsRemoveMetadataResponse)
    async def RemoveMetadata(
        self, request: payloads_pb2.PayloadsRemoveMetadataRequest, context: Context
    ) -> payloads_pb2.PayloadsRemoveMetadataResponse:
        """Delete keys from a reusable payload's metadata (absent keys are ignored)."""
        record = self._payload(request.payload_id)
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_PAYLOAD_METADATA,
            _reusable(record),
            remove=request.keys,
        )
        self._state.payloads.set_metadata(record, metadata)
        return payloads_pb2.PayloadsRemoveMetadataResponse(
            header=ok(), payload_id=identifier(record.payload_id), metadata=record.metadata
        )
