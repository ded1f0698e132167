"""``nvidia.clara.platform.Models`` over :attr:`PlatformState.models` (the model repository).

Every RPC of the proto is served: UploadModel (a zip archive in chunks), ListModels,
DownloadModel (the archive back, in chunks, as the proto defines it; the published client's
``download_model`` calls a stub method that does not exist, so only other clients reach it),
DeleteModel, AddMetadata/RemoveMetadata, and Create/List/Read/Update/Delete of catalogs and of
instances. Lists stream their items in batches of :data:`ITEMS_PER_MESSAGE` (a lone header
message when there are none). See :mod:`server_mock._models` for what is stored where.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import ClassVar, Final, TypeVar

from server_mock._errors import ApiError, ErrorCode
from server_mock._model_archive import extract_archive
from server_mock._models import CatalogKind, CatalogRecord, ModelRecord, ModelType, ModelUpload
from server_mock._payloads import CHUNK_SIZE
from server_mock._platform_api.convert import identifier, parse_identifier, show
from server_mock._platform_api.limits import DEFAULT_MAX_UPLOAD_BYTES
from server_mock._platform_api.metadata import edit_metadata
from server_mock._platform_api.responses import Context, ok, streaming_rpc, unary_rpc
from server_mock._platform_api.streams import CLIENT_WENT_AWAY, client_finished, why_it_ended
from server_mock._platform_state import PlatformState
from server_mock._proto.nvidia.clara.platform import common_pb2, models_pb2, models_pb2_grpc

__all__ = ["ITEMS_PER_MESSAGE", "ModelsService"]

_log = logging.getLogger("server_mock.api")

ITEMS_PER_MESSAGE: Final = 100
"""Models (or catalogs) per message of a streamed list."""

_T = TypeVar("_T")

_TYPES = {
    ModelType.UNKNOWN: models_pb2.MODEL_TYPE_UNKNOWN,
    ModelType.TENSOR_FLOW: models_pb2.MODEL_TYPE_TENSOR_FLOW,
    ModelType.TENSOR_RT: models_pb2.MODEL_TYPE_TENSOR_RT,
    ModelType.PY_TORCH: models_pb2.MODEL_TYPE_PY_TORCH,
}
_FROM_PROTO = {value: key for key, value in _TYPES.items()}


def _batches(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` in batches of :data:`ITEMS_PER_MESSAGE`; one empty batch when empty."""
    for start in range(0, max(len(items), 1), ITEMS_PER_MESSAGE):
        yield items[start : start + ITEMS_PER_MESSAGE]


def _details(record: ModelRecord) -> models_pb2.ModelDetails:
    return models_pb2.ModelDetails(
        model_id=identifier(record.model_id),
        name=record.name,
        type=_TYPES[record.type],
        metadata=record.metadata,
    )


def _model_id(value: common_pb2.Identifier, what: str = "model id") -> uuid.UUID:
    return parse_identifier(value, what, ErrorCode.INVALID_MODEL_ID)


def _catalog_id(kind: CatalogKind, value: common_pb2.Identifier) -> uuid.UUID:
    if kind is CatalogKind.CATALOG:
        return parse_identifier(value, "catalog id", ErrorCode.INVALID_CATALOG_ID)
    return parse_identifier(value, "instance id", ErrorCode.INVALID_INSTANCE_ID)


def _model_type(value: int) -> ModelType:
    try:
        return _FROM_PROTO[models_pb2.ModelType.ValueType(value)]
    except KeyError:
        raise ApiError(
            ErrorCode.INVALID_MODEL, f"field details.type: {value} is not a ModelType"
        ) from None


async def _extract(upload: ModelUpload) -> None:
    """Extract the upload's archive into ``upload.folder / "files"`` in a worker thread.

    A cancellation stops the extraction and waits for the thread to end (within one chunk)
    before it propagates, so the caller's clean-up never races a thread still writing there.
    """
    stop = threading.Event()
    extraction = asyncio.ensure_future(
        asyncio.to_thread(extract_archive, upload.archive, upload.folder / "files", stop)
    )
    try:
        await asyncio.shield(extraction)
    except asyncio.CancelledError:
        stop.set()
        while not extraction.done():
            try:
                await asyncio.wait([extraction])
            except asyncio.CancelledError:
                continue  # cancelled again (the server stopping): still wait for the thread
        if not extraction.cancelled():
            extraction.exception()  # retrieved: the thread's ExtractionStopped is expected
        raise


def _end(upload: ModelUpload, ended: str) -> None:
    """Drop ``upload``'s temporary folder; log it when the upload ended without its model."""
    removed = upload.abort()
    if ended:
        _log.info(
            "Models.UploadModel of model %s ended without storing it (%s, after %d bytes); %s",
            show(upload.name),
            ended,
            upload.size,
            f"removed its temporary folder {upload.folder}" if removed else "no temporary folder",
        )


class ModelsService(models_pb2_grpc.ModelsServicer):
    """``nvidia.clara.platform.Models`` over :attr:`PlatformState.models`.

    Args:
        state: The platform's state.
        max_upload_bytes: The largest archive an upload may write.
    """

    store_error: ClassVar[ErrorCode] = ErrorCode.MODEL_STORE_ERROR

    def __init__(
        self, state: PlatformState, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    ) -> None:
        self._state = state
        self._max_upload_bytes = max_upload_bytes

    def _model(self, value: common_pb2.Identifier) -> ModelRecord:
        return self._state.models.get(_model_id(value))

    # -- models -----------------------------------------------------------------------------

    @unary_rpc(models_pb2.ModelsUploadModelResponse)
    async def UploadModel(
        self,
        request_iterator: AsyncIterator[models_pb2.ModelsUploadModelRequest],
        context: Context,
    ) -> models_pb2.ModelsUploadModelResponse:
        """Store a model (replacing one of the same name); it appears only once complete.

        The first chunk's ``details`` name the model and give its type and metadata; later
        chunks may repeat them (the published client does) but not change the name. An
        upload that ends without its model (refused, cancelled, its connection lost, the
        server stopping) removes its temporary folder before the call ends, and says so in
        the log.
        """
        upload: ModelUpload | None = None
        ended = "it failed unexpectedly"
        try:
            model_type = ModelType.UNKNOWN
            metadata: dict[str, str] = {}
            async for request in request_iterator:
                first = upload is None
                if upload is None:
                    model_type = _model_type(request.details.type)
                    metadata = edit_metadata(
                        {},
                        ErrorCode.INVALID_MODEL_METADATA,
                        f"the new model {show(request.details.name)}",
                        add=request.details.metadata,
                    )
                    upload = self._state.models.begin_upload(request.details.name)
                elif request.details.name and request.details.name != upload.name:
                    raise ApiError(
                        ErrorCode.INVALID_MODEL,
                        "field details.name: the chunks of one upload name different models",
                    )
                if upload.size + len(request.data) > self._max_upload_bytes:
                    raise ApiError(
                        ErrorCode.INVALID_MODEL,
                        f"field data: model {show(upload.name)} is larger than the upload "
                        f"limit of {self._max_upload_bytes} bytes",
                    )
                upload.write(request.data)
                if first:
                    _log.info(
                        "Models.UploadModel: receiving model %s into %s (first chunk, %d "
                        "bytes, written)",
                        show(upload.name),
                        upload.folder,
                        upload.size,
                    )
            if upload is None:
                raise ApiError(
                    ErrorCode.INVALID_MODEL,
                    "field details: the upload carried no chunk, so no model name",
                )
            upload.close()
            if not await client_finished(context):
                ended = CLIENT_WENT_AWAY
                return models_pb2.ModelsUploadModelResponse(header=ok())  # nobody reads it
            await _extract(upload)
            record = self._state.models.commit(upload, model_type, metadata)
            ended = ""
        except OSError as error:  # e.g. the disk is full
            ended = why_it_ended(error)
            _log.exception("Models.UploadModel failed")
            raise ApiError(
                ErrorCode.INTERNAL, f"the mock could not store the model: {error}"
            ) from error
        except BaseException as error:  # refused, cancelled, not saved: logged, then raised
            ended = why_it_ended(error)
            raise
        finally:
            if upload is not None:
                _end(upload, ended)
        _log.info("model %s (%s) stored", record.model_id.hex, record.name)
        return models_pb2.ModelsUploadModelResponse(header=ok(), details=_details(record))

    @streaming_rpc(models_pb2.ModelsListModelsResponse)
    async def ListModels(
        self, request: models_pb2.ModelsListModelsRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsListModelsResponse]:
        """The details (not the content) of every model."""
        for batch in _batches(self._state.models.all()):
            yield models_pb2.ModelsListModelsResponse(
                header=ok(), models=[_details(m) for m in batch]
            )

    @streaming_rpc(models_pb2.ModelsDownloadModelResponse)
    async def DownloadModel(
        self, request: models_pb2.ModelsDownloadModelRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsDownloadModelResponse]:
        """The model's archive in chunks of :data:`CHUNK_SIZE`; the first carries the details."""
        record = self._model(request.model_id)
        with record.archive.open("rb") as archive:
            first = True
            while True:
                data = archive.read(CHUNK_SIZE)
                if not data and not first:
                    return
                response = models_pb2.ModelsDownloadModelResponse(data=data)
                if first:
                    response.header.CopyFrom(ok())
                    response.details.CopyFrom(_details(record))
                    first = False
                yield response

    @unary_rpc(models_pb2.ModelsDeleteModelResponse)
    async def DeleteModel(
        self, request: models_pb2.ModelsDeleteModelRequest, context: Context
    ) -> models_pb2.ModelsDeleteModelResponse:
        """Remove a model, and drop it from every catalog and instance."""
        record = self._state.models.delete(_model_id(request.model_id))
        _log.info("model %s (%s) deleted", record.model_id.hex, record.name)
        return models_pb2.ModelsDeleteModelResponse(
            header=ok(), model_id=identifier(record.model_id)
        )

    @unary_rpc(models_pb2.ModelsAddMetadataResponse)
    async def AddMetadata(
        self, request: models_pb2.ModelsAddMetadataRequest, context: Context
    ) -> models_pb2.ModelsAddMetadataResponse:
        """Add key/value pairs to a model's metadata."""
        record = self._model(request.model_id)
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_MODEL_METADATA,
            f"model {record.model_id.hex}",
            add=request.metadata,
        )
        self._state.models.set_metadata(record, metadata)
        return models_pb2.ModelsAddMetadataResponse(
            header=ok(), model_id=identifier(record.model_id), metadata=record.metadata
        )

    @unary_rpc(models_pb2.ModelsRemoveMetadataResponse)
    async def RemoveMetadata(
        self, request: models_pb2.ModelsRemoveMetadataRequest, context: Context
    ) -> models_pb2.ModelsRemoveMetadataResponse:
        """Delete keys from a model's metadata (absent keys are ignored)."""
        record = self._model(request.model_id)
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_MODEL_METADATA,
            f"model {record.model_id.hex}",
            remove=request.keys,
        )
        self._state.models.set_metadata(record, metadata)
        return models_pb2.ModelsRemoveMetadataResponse(
            header=ok(), model_id=identifier(record.model_id), metadata=record.metadata
        )

    # -- catalogs and instances -------------------------------------------------------------

    def _models_listed(self, record: CatalogRecord) -> list[models_pb2.ModelDetails]:
        return [_details(m) for m in self._state.models.models_of(record)]

    def _catalog_details(
        self, records: Sequence[CatalogRecord]
    ) -> list[models_pb2.ModelCatalogDetails]:
        return [
            models_pb2.ModelCatalogDetails(
                catalog_id=identifier(c.catalog_id), models=self._models_listed(c)
            )
            for c in records
        ]

    async def _update(
        self,
        kind: CatalogKind,
        request_iterator: AsyncIterator[
            models_pb2.ModelsUpdateCatalogRequest | models_pb2.ModelsUpdateInstanceRequest
        ],
    ) -> CatalogRecord:
        """Gather a streamed update (one catalog, the union of the model ids) and apply it."""
        catalog_id: uuid.UUID | None = None
        model_ids: list[uuid.UUID] = []
        async for request in request_iterator:
            raw = (
                request.catalog_id
                if isinstance(request, models_pb2.ModelsUpdateCatalogRequest)
                else request.instance_id
            )
            if raw.value or catalog_id is None:
                this = _catalog_id(kind, raw)
                if catalog_id is not None and this != catalog_id:
                    raise ApiError(
                        ErrorCode.INVALID_CATALOG_ID
                        if kind is CatalogKind.CATALOG
                        else ErrorCode.INVALID_INSTANCE_ID,
                        f"the messages of one update name different {kind.value}s",
                    )
                catalog_id = this
            model_ids.extend(_model_id(m, "field model_ids: model id") for m in request.model_ids)
        if catalog_id is None:
            raise ApiError(
                ErrorCode.INVALID_CATALOG_ID
                if kind is CatalogKind.CATALOG
                else ErrorCode.INVALID_INSTANCE_ID,
                f"the update carried no message, so no {kind.value} id",
            )
        record = self._state.models.catalog(kind, catalog_id)
        self._state.models.set_models(record, model_ids)
        return record

    @unary_rpc(models_pb2.ModelsCreateCatalogResponse)
    async def CreateCatalog(
        self, request: models_pb2.ModelsCreateCatalogRequest, context: Context
    ) -> models_pb2.ModelsCreateCatalogResponse:
        """Create an empty catalog."""
        record = self._state.models.create_catalog(CatalogKind.CATALOG)
        return models_pb2.ModelsCreateCatalogResponse(
            header=ok(), catalog_id=identifier(record.catalog_id)
        )

    @streaming_rpc(models_pb2.ModelsListCatalogsResponse)
    async def ListCatalogs(
        self, request: models_pb2.ModelsListCatalogsRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsListCatalogsResponse]:
        """Every catalog with the models it lists."""
        for batch in _batches(self._state.models.catalogs(CatalogKind.CATALOG)):
            yield models_pb2.ModelsListCatalogsResponse(
                header=ok(), catalogs=self._catalog_details(batch)
            )

    @streaming_rpc(models_pb2.ModelsReadCatalogResponse)
    async def ReadCatalog(
        self, request: models_pb2.ModelsReadCatalogRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsReadCatalogResponse]:
        """The details of the models one catalog lists."""
        catalog_id = _catalog_id(CatalogKind.CATALOG, request.catalog_id)
        record = self._state.models.catalog(CatalogKind.CATALOG, catalog_id)
        for batch in _batches(self._models_listed(record)):
            yield models_pb2.ModelsReadCatalogResponse(
                header=ok(), catalog_id=identifier(record.catalog_id), models=batch
            )

    @unary_rpc(models_pb2.ModelsUpdateCatalogResponse)
    async def UpdateCatalog(
        self,
        request_iterator: AsyncIterator[models_pb2.ModelsUpdateCatalogRequest],
        context: Context,
    ) -> models_pb2.ModelsUpdateCatalogResponse:
        """Replace the models a catalog lists with the union of the streamed model ids."""
        record = await self._update(CatalogKind.CATALOG, request_iterator)
        return models_pb2.ModelsUpdateCatalogResponse(
            header=ok(), catalog_id=identifier(record.catalog_id)
        )

    @unary_rpc(models_pb2.ModelsDeleteCatalogResponse)
    async def DeleteCatalog(
        self, request: models_pb2.ModelsDeleteCatalogRequest, context: Context
    ) -> models_pb2.ModelsDeleteCatalogResponse:
        """Remove a catalog; the models it lists are kept."""
        catalog_id = _catalog_id(CatalogKind.CATALOG, request.catalog_id)
        self._state.models.delete_catalog(CatalogKind.CATALOG, catalog_id)
        return models_pb2.ModelsDeleteCatalogResponse(
            header=ok(), catalog_id=identifier(catalog_id)
        )

    @unary_rpc(models_pb2.ModelsCreateInstanceResponse)
    async def CreateInstance(
        self, request: models_pb2.ModelsCreateInstanceRequest, context: Context
    ) -> models_pb2.ModelsCreateInstanceResponse:
        """Create an empty catalog instance."""
        record = self._state.models.create_catalog(CatalogKind.INSTANCE)
        return models_pb2.ModelsCreateInstanceResponse(
            header=ok(), instance_id=identifier(record.catalog_id)
        )

    @streaming_rpc(models_pb2.ModelsListInstancesResponse)
    async def ListInstances(
        self, request: models_pb2.ModelsListInstancesRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsListInstancesResponse]:
        """Every catalog instance with the models it lists."""
        for batch in _batches(self._state.models.catalogs(CatalogKind.INSTANCE)):
            yield models_pb2.ModelsListInstancesResponse(
                header=ok(), instances=self._catalog_details(batch)
            )

    @streaming_rpc(models_pb2.ModelsReadInstanceResponse)
    async def ReadInstance(
        self, request: models_pb2.ModelsReadInstanceRequest, context: Context
    ) -> AsyncIterator[models_pb2.ModelsReadInstanceResponse]:
        """The details of the models one catalog instance lists."""
        instance_id = _catalog_id(CatalogKind.INSTANCE, request.instance_id)
        record = self._state.models.catalog(CatalogKind.INSTANCE, instance_id)
        for batch in _batches(self._models_listed(record)):
            yield models_pb2.ModelsReadInstanceResponse(
                header=ok(), instance_id=identifier(record.catalog_id), models=batch
            )

    @unary_rpc(models_pb2.ModelsUpdateInstanceResponse)
    async def UpdateInstance(
        self,
        request_iterator: AsyncIterator[models_pb2.ModelsUpdateInstanceRequest],
        context: Context,
    ) -> models_pb2.ModelsUpdateInstanceResponse:
        """Replace the models an instance lists with the union of the streamed model ids."""
        record = await self._update(CatalogKind.INSTANCE, request_iterator)
        return models_pb2.ModelsUpdateInstanceResponse(
            header=ok(), instance_id=identifier(record.catalog_id)
        )

    @unary_rpc(models_pb2.ModelsDeleteInstanceResponse)
    async def DeleteInstance(
        self, request: models_pb2.ModelsDeleteInstanceRequest, context: Context
    ) -> models_pb2.ModelsDeleteInstanceResponse:
        """Remove a catalog instance; the models it lists are kept."""
        instance_id = _catalog_id(CatalogKind.INSTANCE, request.instance_id)
        self._state.models.delete_catalog(CatalogKind.INSTANCE, instance_id)
        return models_pb2.ModelsDeleteInstanceResponse(
            header=ok(), instance_id=identifier(instance_id)
        )
