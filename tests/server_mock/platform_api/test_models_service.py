"""The Models service."""

from __future__ import annotations

import grpc
import pytest
from _api import Api

from server_mock._proto.nvidia.clara.platform import models_pb2


def test_models_answer_unimplemented(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        api.models.AddMetadata(models_pb2.ModelsAddMetadataRequest())
    assert unary.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert "Models.AddMetadata" in unary.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as streaming:
        list(api.models.ListModels(models_pb2.ModelsListModelsRequest()))
    assert streaming.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as upload:
        api.models.UploadModel(iter([models_pb2.ModelsUploadModelRequest()]))
    assert upload.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
