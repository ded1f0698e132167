"""The Models service: the model repository, its catalogs and instances.

Every refusal names the field at fault and stores nothing (the repository is checked after).
"""

from __future__ import annotations

import hashlib
import io
import stat
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _api import CHUNK, Api, assert_refused, connect, ident, trailer

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._platform_api.models import ITEMS_PER_MESSAGE
from server_mock._proto.nvidia.clara.platform import common_pb2, models_pb2

CONFIG = "name: 'liver'\nplatform: 'onnxruntime_onnx'\n"


def archive(members: dict[str, bytes] | None = None) -> bytes:
    """A zip of a Triton model folder (or of ``members``)."""
    members = members or {
        "liver/config.pbtxt": CONFIG.encode(),
        # Not compressible, more than three chunks.
        "liver/1/model.onnx": b"".join(
            hashlib.sha512(bytes([i % 256, i // 256])).digest() for i in range(3000)
        ),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def chunks(
    data: bytes, name: str = "liver", **fields: object
) -> Iterator[models_pb2.ModelsUploadModelRequest]:
    details = models_pb2.ModelDetails(name=name, **fields)  # type: ignore[arg-type]
    for start in range(0, max(len(data), 1), CHUNK):
        # The published client repeats the details in every chunk.
        yield models_pb2.ModelsUploadModelRequest(details=details, data=data[start : start + CHUNK])


def upload(
    api: Api, data: bytes | None = None, name: str = "liver", **fields: object
) -> models_pb2.ModelsUploadModelResponse:
    return api.models.UploadModel(chunks(archive() if data is None else data, name, **fields))


def model_id(api: Api, name: str = "liver") -> common_pb2.Identifier:
    response = upload(api, name=name)
    assert response.header.code == 0, response.header.messages
    return response.details.model_id


def listed(api: Api) -> list[models_pb2.ModelDetails]:
    return [
        m for r in api.models.ListModels(models_pb2.ModelsListModelsRequest()) for m in r.models
    ]


def download(
    api: Api, model: common_pb2.Identifier
) -> list[models_pb2.ModelsDownloadModelResponse]:
    return list(api.models.DownloadModel(models_pb2.ModelsDownloadModelRequest(model_id=model)))


def stored(platform: MockPlatform) -> tuple[list[str], list[str]]:
    """The repository's model names and the folders under its root (but the upload area)."""
    names = platform.call(lambda: [m.name for m in platform.state.models.all()])
    root = platform.state.workspace / "models"
    folders = (
        sorted(p.name for p in root.iterdir() if p.name != ".uploads") if root.is_dir() else []
    )
    leftovers = list((root / ".uploads").iterdir()) if (root / ".uploads").is_dir() else []
    assert leftovers == [], leftovers
    return names, folders


def test_upload_list_download_and_find(api: Api, platform: MockPlatform) -> None:
    data = archive()
    response, call = api.models.UploadModel.with_call(
        chunks(data, type=models_pb2.MODEL_TYPE_TENSOR_RT, metadata={"organ": "liver"})
    )
    assert response.header.code == 0, response.header.messages
    assert trailer(call) is None
    details = response.details
    assert len(details.model_id.value) == 32 and details.name == "liver"
    assert details.type == models_pb2.MODEL_TYPE_TENSOR_RT
    assert dict(details.metadata) == {"organ": "liver"}

    [only] = listed(api)
    assert (only.model_id, only.name, dict(only.metadata)) == (
        details.model_id,
        "liver",
        {"organ": "liver"},
    )

    messages = download(api, details.model_id)
    assert messages[0].header.code == 0 and messages[0].details == details
    assert all(len(m.data) <= CHUNK for m in messages) and len(messages) > 1
    assert b"".join(m.data for m in messages) == data

    # The platform resolves an operator's models by name (case-insensitively): to the files.
    found = platform.call(lambda: platform.state.models.find("LIVER"))
    assert isinstance(found, Path)
    assert (found / "liver" / "config.pbtxt").read_text() == CONFIG
    assert platform.call(lambda: platform.state.models.find("kidney")) is None


def test_an_upload_with_a_known_name_replaces_the_model_and_keeps_its_id(
    api: Api, platform: MockPlatform
) -> None:
    first = model_id(api)
    replacement = archive({"Liver/config.pbtxt": b"name: 'v2'"})
    again = upload(api, replacement, name="Liver", type=models_pb2.MODEL_TYPE_PY_TORCH)
    assert again.header.code == 0, again.header.messages
    assert again.details.model_id == first and again.details.name == "Liver"
    [only] = listed(api)
    assert only.type == models_pb2.MODEL_TYPE_PY_TORCH
    assert b"".join(m.data for m in download(api, first)) == replacement
    found = platform.call(lambda: platform.state.models.find("liver"))
    assert found is not None and [p.name for p in found.iterdir()] == ["Liver"]
    assert stored(platform) == (["Liver"], [first.value])


def link_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        info = zipfile.ZipInfo("liver/model.onnx")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(info, "/etc/passwd")
    return buffer.getvalue()


BAD_UPLOADS = {
    "not-a-zip": (lambda: chunks(b"plain bytes"), "field data", "not a zip archive"),
    "climbs-out": (
        lambda: chunks(archive({"../outside.txt": b"x"})),
        "field data",
        "outside the model's folder",
    ),
    "absolute": (
        lambda: chunks(archive({"/etc/cron.d/x": b"x"})),
        "field data",
        "outside the model's folder",
    ),
    "link": (lambda: chunks(link_archive()), "field data", "is a link or a device"),
    "no-name": (lambda: chunks(archive(), name=""), "field details.name", "needs a name"),
    "slash-in-name": (lambda: chunks(archive(), name="a/b"), "field details.name", "'a/b'"),
    "bad-type": (lambda: chunks(archive(), type=9), "field details.type", "9 is not a ModelType"),
    "no-chunk": (lambda: iter([]), "field details", "carried no chunk"),
    "two-names": (
        lambda: iter(
            [
                models_pb2.ModelsUploadModelRequest(
                    details=models_pb2.ModelDetails(name="a"), data=archive()[:10]
                ),
                models_pb2.ModelsUploadModelRequest(
                    details=models_pb2.ModelDetails(name="b"), data=archive()[10:]
                ),
            ]
        ),
        "field details.name",
        "different models",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_a_refused_upload_names_the_field_and_stores_nothing(
    api: Api, platform: MockPlatform, case: str
) -> None:
    make, field, fragment = BAD_UPLOADS[case]
    response, call = api.models.UploadModel.with_call(make())
    assert_refused(response.header, ErrorCode.INVALID_MODEL, field, fragment)
    assert trailer(call) == "INVALID_ARGUMENT"
    assert not response.details.model_id.value
    assert stored(platform) == ([], [])


def test_an_upload_over_the_size_limit_stores_nothing() -> None:
    with MockPlatform(max_upload_bytes=CHUNK) as platform, connect(platform) as api:
        response = upload(api)
        assert_refused(
            response.header, ErrorCode.INVALID_MODEL, "field data", f"limit of {CHUNK} bytes"
        )
        assert stored(platform) == ([], [])


def test_delete_model_drops_it_from_catalogs(api: Api, platform: MockPlatform) -> None:
    liver, kidney = model_id(api), model_id(api, "kidney")
    catalog = api.models.CreateCatalog(models_pb2.ModelsCreateCatalogRequest()).catalog_id
    updated = api.models.UpdateCatalog(
        iter([models_pb2.ModelsUpdateCatalogRequest(catalog_id=catalog, model_ids=[liver, kidney])])
    )
    assert updated.header.code == 0
    deleted = api.models.DeleteModel(models_pb2.ModelsDeleteModelRequest(model_id=liver))
    assert deleted.header.code == 0 and deleted.model_id == liver
    assert [m.name for m in listed(api)] == ["kidney"]
    [read] = list(api.models.ReadCatalog(models_pb2.ModelsReadCatalogRequest(catalog_id=catalog)))
    assert [m.name for m in read.models] == ["kidney"]
    assert_refused(download(api, liver)[0].header, ErrorCode.MODEL_NOT_FOUND, liver.value)
    assert stored(platform) == (["kidney"], [kidney.value])
    assert platform.call(lambda: platform.state.models.find("liver")) is None


KINDS = ["catalog", "instance"]


class Catalogs:
    """The catalog RPCs, or the instance RPCs, under one set of names."""

    def __init__(self, api: Api, kind: str) -> None:
        self.api, self.kind = api, kind
        self.not_found = (
            ErrorCode.CATALOG_NOT_FOUND if kind == "catalog" else ErrorCode.INSTANCE_NOT_FOUND
        )
        self.invalid = (
            ErrorCode.INVALID_CATALOG_ID if kind == "catalog" else ErrorCode.INVALID_INSTANCE_ID
        )

    def create(self) -> common_pb2.Identifier:
        if self.kind == "catalog":
            response = self.api.models.CreateCatalog(models_pb2.ModelsCreateCatalogRequest())
            assert response.header.code == 0
            return response.catalog_id
        created = self.api.models.CreateInstance(models_pb2.ModelsCreateInstanceRequest())
        assert created.header.code == 0
        return created.instance_id

    def update(
        self, *messages: tuple[common_pb2.Identifier | None, list[common_pb2.Identifier]]
    ) -> common_pb2.ResponseHeader:
        if self.kind == "catalog":
            return self.api.models.UpdateCatalog(
                iter(
                    models_pb2.ModelsUpdateCatalogRequest(catalog_id=c, model_ids=m)
                    for c, m in messages
                )
            ).header
        return self.api.models.UpdateInstance(
            iter(
                models_pb2.ModelsUpdateInstanceRequest(instance_id=c, model_ids=m)
                for c, m in messages
            )
        ).header

    def read(self, ident: common_pb2.Identifier) -> tuple[common_pb2.ResponseHeader, list[str]]:
        if self.kind == "catalog":
            responses = list(
                self.api.models.ReadCatalog(models_pb2.ModelsReadCatalogRequest(catalog_id=ident))
            )
        else:
            responses = list(
                self.api.models.ReadInstance(
                    models_pb2.ModelsReadInstanceRequest(instance_id=ident)
                )
            )
        return responses[0].header, [m.name for r in responses for m in r.models]

    def listing(self) -> dict[str, list[str]]:
        if self.kind == "catalog":
            responses = self.api.models.ListCatalogs(models_pb2.ModelsListCatalogsRequest())
            items = [c for r in responses for c in r.catalogs]
        else:
            answers = self.api.models.ListInstances(models_pb2.ModelsListInstancesRequest())
            items = [c for r in answers for c in r.instances]
        return {c.catalog_id.value: [m.name for m in c.models] for c in items}

    def delete(self, ident: common_pb2.Identifier) -> common_pb2.ResponseHeader:
        if self.kind == "catalog":
            return self.api.models.DeleteCatalog(
                models_pb2.ModelsDeleteCatalogRequest(catalog_id=ident)
            ).header
        return self.api.models.DeleteInstance(
            models_pb2.ModelsDeleteInstanceRequest(instance_id=ident)
        ).header


@pytest.mark.parametrize("kind", KINDS)
def test_create_update_read_list_delete(api: Api, kind: str) -> None:
    rpcs = Catalogs(api, kind)
    liver, kidney = model_id(api), model_id(api, "kidney")
    first, second = rpcs.create(), rpcs.create()
    assert rpcs.listing() == {first.value: [], second.value: []}
    # The union of the streamed ids replaces the set; the id need only be in the first message.
    assert rpcs.update((first, [kidney]), (None, [liver, kidney])).code == 0
    header, names = rpcs.read(first)
    assert header.code == 0 and names == ["kidney", "liver"]
    assert rpcs.update((first, [liver])).code == 0
    assert rpcs.read(first)[1] == ["liver"]
    assert rpcs.listing() == {first.value: ["liver"], second.value: []}
    assert rpcs.delete(first).code == 0
    assert_refused(rpcs.read(first)[0], rpcs.not_found, first.value)
    assert rpcs.listing() == {second.value: []}
    assert len(listed(api)) == 2  # the models are kept


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_update_changes_nothing(api: Api, kind: str) -> None:
    rpcs = Catalogs(api, kind)
    liver = model_id(api)
    target = rpcs.create()
    assert rpcs.update((target, [liver])).code == 0
    ghost = ident(uuid.uuid4())
    assert_refused(rpcs.update((target, [liver, ghost])), ErrorCode.MODEL_NOT_FOUND, ghost.value)
    assert_refused(
        rpcs.update((target, [ident("nope")])),
        ErrorCode.INVALID_MODEL_ID,
        "field model_ids",
        "'nope'",
    )
    assert_refused(rpcs.update((target, []), (rpcs.create(), [])), rpcs.invalid, "different")
    assert_refused(rpcs.update(), rpcs.invalid, "no message")
    assert rpcs.read(target)[1] == ["liver"]
    # A catalog is not an instance, nor the other way round.
    other = Catalogs(api, "instance" if kind == "catalog" else "catalog")
    assert_refused(other.read(target)[0], other.not_found)
    assert_refused(other.delete(target), other.not_found)
    assert rpcs.read(target)[1] == ["liver"]


def test_long_lists_are_streamed_in_batches(api: Api) -> None:
    small = archive({"m/config.pbtxt": b"x"})
    for index in range(ITEMS_PER_MESSAGE + 1):
        assert upload(api, small, name=f"m{index:03}").header.code == 0
    responses = list(api.models.ListModels(models_pb2.ModelsListModelsRequest()))
    assert [len(r.models) for r in responses] == [ITEMS_PER_MESSAGE, 1]
    assert all(r.header.code == 0 for r in responses)


def test_empty_lists_are_one_header_message(api: Api) -> None:
    [models] = list(api.models.ListModels(models_pb2.ModelsListModelsRequest()))
    [catalogs] = list(api.models.ListCatalogs(models_pb2.ModelsListCatalogsRequest()))
    [instances] = list(api.models.ListInstances(models_pb2.ModelsListInstancesRequest()))
    for response in (models, catalogs, instances):
        assert response.header.code == 0
    assert not models.models and not catalogs.catalogs and not instances.instances


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_MODEL_ID),
        ("nope", ErrorCode.INVALID_MODEL_ID),
        (uuid.uuid4().hex, ErrorCode.MODEL_NOT_FOUND),
    ],
)
def test_model_ids_are_validated(api: Api, value: str, code: ErrorCode) -> None:
    model = ident(value)
    assert_refused(download(api, model)[0].header, code)
    assert_refused(
        api.models.DeleteModel(models_pb2.ModelsDeleteModelRequest(model_id=model)).header, code
    )
    assert_refused(
        api.models.AddMetadata(
            models_pb2.ModelsAddMetadataRequest(model_id=model, metadata={"a": "b"})
        ).header,
        code,
    )
    assert_refused(
        api.models.RemoveMetadata(
            models_pb2.ModelsRemoveMetadataRequest(model_id=model, keys=["a"])
        ).header,
        code,
    )
