"""The Pipelines service: definitions, ids, metadata and the operator graph."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from _api import (
    BAD_DEFINITIONS,
    HEADER,
    TWO_STAGES,
    Api,
    assert_refused,
    create_pipeline,
    ident,
    list_pipelines,
    pipeline_id,
    trailer,
)

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._platform_api.limits import MAX_DAG_DEPTH
from server_mock._proto.nvidia.clara.platform import (
    jobs_pb2,
    pipelines_pb2,
)


def test_pipeline_create_details_list_update_remove(api: Api) -> None:
    created = create_pipeline(api, metadata={"owner": "tests"})
    assert created.header.code == 0
    assert len(created.pipeline_id.value) == 32
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=created.pipeline_id)
        )
    )
    assert details.header.code == 0
    assert details.name == "two-stages"
    assert details.definition.path == "pipeline.yaml"
    assert details.definition.content == TWO_STAGES
    assert dict(details.metadata) == {"owner": "tests"}
    [root] = details.dag
    assert root.name == "first"
    assert [n.name for n in root.next] == ["second"]

    [listed] = list_pipelines(api)
    assert (listed.pipeline_id.value, listed.name) == (created.pipeline_id.value, "two-stages")

    renamed = TWO_STAGES.replace("name: two-stages", "name: renamed")
    update = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    pipeline_id=created.pipeline_id,
                    definition=pipelines_pb2.PipelineDefinitionFile(
                        path="v2.yaml", content=renamed
                    ),
                )
            ]
        )
    )
    assert update.header.code == 0
    assert [p.name for p in list_pipelines(api)] == ["renamed"]

    removed = api.pipelines.Remove(
        pipelines_pb2.PipelinesRemoveRequest(pipeline_id=created.pipeline_id)
    )
    assert removed.header.code == 0
    assert list_pipelines(api) == []
    [lone] = list(api.pipelines.List(pipelines_pb2.PipelinesListRequest()))
    assert lone.header.code == 0 and not lone.details.pipeline_id.value


def test_pipeline_definition_streamed_in_pieces(api: Api) -> None:
    pieces = [TWO_STAGES[i : i + 25] for i in range(0, len(TWO_STAGES), 25)]
    requests = [
        pipelines_pb2.PipelinesCreateRequest(
            definition=pipelines_pb2.PipelineDefinitionFile(path="p.yaml", content=piece)
        )
        for piece in pieces
    ]
    created = api.pipelines.Create(iter(requests))
    assert created.header.code == 0, created.header.messages
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=created.pipeline_id)
        )
    )
    assert details.definition.content == TWO_STAGES


@pytest.mark.parametrize("case", sorted(BAD_DEFINITIONS))
def test_pipeline_definition_errors_name_operator_and_field_and_store_nothing(
    api: Api, platform: MockPlatform, case: str
) -> None:
    text, fragments = BAD_DEFINITIONS[case]
    response, call = api.pipelines.Create.with_call(
        iter(
            [
                pipelines_pb2.PipelinesCreateRequest(
                    definition=pipelines_pb2.PipelineDefinitionFile(content=text)
                )
            ]
        )
    )
    assert_refused(
        response.header, ErrorCode.PIPELINE_LOAD_ERROR, "invalid pipeline definition", *fragments
    )
    assert trailer(call) == "INVALID_ARGUMENT"
    assert not response.pipeline_id.value
    assert list_pipelines(api) == []
    assert platform.call(platform.state.pipelines.all) == []


def test_pipeline_create_refuses_several_files_and_empty_streams(api: Api) -> None:
    two_files = [
        pipelines_pb2.PipelinesCreateRequest(
            definition=pipelines_pb2.PipelineDefinitionFile(path=p, content=TWO_STAGES)
        )
        for p in ("a.yaml", "b.yaml")
    ]
    assert_refused(
        api.pipelines.Create(iter(two_files)).header,
        ErrorCode.PIPELINE_DEFINITION_ERROR,
        "single-file",
        "'a.yaml'",
    )
    assert_refused(
        api.pipelines.Create(iter([])).header,
        ErrorCode.PIPELINE_DEFINITION_ERROR,
        "no pipeline definition",
    )
    assert list_pipelines(api) == []


def test_pipeline_create_with_a_requested_id(api: Api) -> None:
    wanted = uuid.uuid4()
    created = create_pipeline(api, pipeline_id=ident(str(wanted)))  # hyphenated form accepted
    assert created.header.code == 0
    assert created.pipeline_id.value == wanted.hex
    again = create_pipeline(api, pipeline_id=ident(wanted))
    assert_refused(again.header, ErrorCode.PIPELINE_EXISTS, wanted.hex)
    bad = create_pipeline(api, pipeline_id=ident("not-an-id"))
    assert_refused(bad.header, ErrorCode.INVALID_PIPELINE_ID, "'not-an-id'")
    assert len(list_pipelines(api)) == 1


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_PIPELINE_ID),
        ("xyz", ErrorCode.INVALID_PIPELINE_ID),
        ("{" + uuid.uuid4().hex + "}", ErrorCode.INVALID_PIPELINE_ID),
        (uuid.uuid4().hex + "0", ErrorCode.INVALID_PIPELINE_ID),
        (uuid.uuid4().hex, ErrorCode.PIPELINE_NOT_FOUND),
        (str(uuid.uuid4()), ErrorCode.PIPELINE_NOT_FOUND),
    ],
)
def test_pipeline_ids_are_validated(api: Api, value: str, code: ErrorCode) -> None:
    pipeline = ident(value)
    [details] = list(
        api.pipelines.Details(pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline))
    )
    assert_refused(details.header, code)
    assert_refused(
        api.pipelines.Remove(pipelines_pb2.PipelinesRemoveRequest(pipeline_id=pipeline)).header,
        code,
    )
    add = api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=pipeline, metadata={"a": "b"})
    )
    assert_refused(add.header, code)
    job = api.jobs.Create(jobs_pb2.JobsCreateRequest(pipeline_id=pipeline, name="job"))
    assert_refused(job.header, code)


def test_pipeline_update_with_an_invalid_definition_keeps_the_old_one(api: Api) -> None:
    pipeline = pipeline_id(api)
    text, _ = BAD_DEFINITIONS["cycle"]
    update = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    pipeline_id=pipeline,
                    definition=pipelines_pb2.PipelineDefinitionFile(content=text),
                )
            ]
        )
    )
    assert_refused(update.header, ErrorCode.PIPELINE_LOAD_ERROR, "cycle")
    [details] = list(
        api.pipelines.Details(pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline))
    )
    assert details.definition.content == TWO_STAGES
    missing_id = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    definition=pipelines_pb2.PipelineDefinitionFile(content=TWO_STAGES)
                )
            ]
        )
    )
    assert_refused(missing_id.header, ErrorCode.INVALID_PIPELINE_ID, "pipeline id is required")


def test_pipeline_dag_of_a_diamond_and_of_a_long_chain(api: Api) -> None:
    diamond = HEADER.replace("broken", "diamond") + "".join(
        f"- name: {name}\n  container: {{image: x}}\n"
        f"  input: [{inputs}]\n  output: [{{name: {name}, path: /o}}]\n"
        for name, inputs in [
            ("top", "{path: /i}"),
            ("left", "{from: top, name: top, path: /i}"),
            ("right", "{from: top, name: top, path: /i}"),
            ("bottom", "{from: left, name: left, path: /l}, {from: right, name: right, path: /r}"),
        ]
    )
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline_id(api, diamond))
        )
    )
    [top] = details.dag
    left, right = top.next
    assert (left.name, right.name) == ("left", "right")
    assert [n.name for n in left.next] == ["bottom"] and [n.name for n in right.next] == ["bottom"]
    assert len(left.next[0].next) == 0  # bottom is expanded once only

    length = MAX_DAG_DEPTH * 2 + 5
    chain = HEADER.replace("broken", "chain") + "".join(
        f"- name: op{i}\n  container: {{image: x}}\n"
        + (f"  input: [{{from: op{i - 1}, path: /i}}]\n" if i else "")
        + "  output: [{path: /o}]\n"
        for i in range(length)
    )
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline_id(api, chain))
        )
    )
    seen: list[str] = []

    def walk(
        nodes: Sequence[pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode], depth: int
    ) -> None:
        for node in nodes:
            assert depth <= MAX_DAG_DEPTH
            seen.append(node.name)
            walk(node.next, depth + 1)

    walk(details.dag, 1)
    assert {f"op{i}" for i in range(length)} <= set(seen)
    assert len(details.dag) == 3  # the root, then the two cut points continue at the top level


WITH_AN_EXTRA_KEY = TWO_STAGES.replace(
    "  container: {image: example/first}", "  container: {image: example/first}\n  colour: blue"
)


def test_definition_warnings_are_answered_in_the_header(api: Api) -> None:
    created = create_pipeline(api, WITH_AN_EXTRA_KEY)
    assert created.header.code == 0
    (warning,) = created.header.messages
    assert "'first'" in warning and "colour" in warning
    updated = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    pipeline_id=created.pipeline_id,
                    definition=pipelines_pb2.PipelineDefinitionFile(content=WITH_AN_EXTRA_KEY),
                )
            ]
        )
    )
    assert (updated.header.code, list(updated.header.messages)) == (0, [warning])
    plain = create_pipeline(api)
    assert (plain.header.code, list(plain.header.messages)) == (0, [])
