"""Template placeholders ``${{ name }}``: defaults at creation, a job's values at start."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server_mock._definition import (
    MAX_DEFINITION_BYTES,
    ContainerSpec,
    PipelineDefinitionError,
    parse_pipeline_definition,
    resolve_template,
)

TEMPLATE = """\
api-version: 0.4.0
name: liver
pull-secrets: [ngc-clara]
orchestrator: Clara
parameters:
  image-tag: "0.7.2"
  series-from: dicom-reader
  Threshold: 0.5
  wait: 120
operators:
- name: dicom-reader
  container:
    image: example/dicom-reader
    tag: ${{ image-tag }}
  input: [{path: /input}]
  output: [{path: /output}]
- name: segment
  parameters:
    model: liver_v1
  container:
    image: example/segment
    tag: "${{ image-tag }}"
    command: ["segment", "--model=${{model}}", "--threshold=${{ threshold }}"]
  timeout: ${{ wait }}
  variables:
    MODEL: ${{ model }}
  input:
  - from: ${{ series-from }}
    path: /input
  output: [{path: /output}]
"""


def expect_error(
    arguments: dict[str, str], text: str, operator: str | None, field: str | None, fragment: str
) -> None:
    with pytest.raises(PipelineDefinitionError) as info:
        resolve_template(text, arguments)
    error = info.value
    assert (error.operator, error.field) == (operator, field), str(error)
    assert fragment in str(error)


def test_placeholders_take_their_defaults_at_creation() -> None:
    definition = parse_pipeline_definition(TEMPLATE)

    assert definition.parameters == {
        "image-tag": "0.7.2",
        "series-from": "dicom-reader",
        "Threshold": "0.5",
        "wait": "120",
        "model": "liver_v1",
    }
    reader, segment = definition.operators
    assert reader.container.tag == "0.7.2"
    assert segment.container == ContainerSpec(
        "example/segment", "0.7.2", ("segment", "--model=liver_v1", "--threshold=0.5")
    )
    assert segment.timeout == datetime.timedelta(seconds=120)  # a plain scalar: a number
    assert segment.variables == {"MODEL": "liver_v1"}
    assert segment.upstream == {"dicom-reader"}
    assert definition.warnings == ()


def test_arguments_fill_placeholders_and_names_fold_case() -> None:
    definition = resolve_template(
        TEMPLATE, {"IMAGE-TAG": "0.8.1", "threshold": "0.7", "model": "liver_v2", "wait": "60"}
    )

    segment = definition.operator("segment")
    assert segment.container.tag == "0.8.1"
    assert segment.container.command == ("segment", "--model=liver_v2", "--threshold=0.7")
    assert segment.variables == {"MODEL": "liver_v2"}
    assert segment.timeout == datetime.timedelta(seconds=60)
    # The declared defaults stay what the definition says.
    assert definition.parameters["image-tag"] == "0.7.2"


def test_a_template_can_rewire_the_graph() -> None:
    text = TEMPLATE.replace(
        "  output: [{path: /output}]\n- name: segment",
        "  output: [{path: /output}]\n- name: other-reader\n  container: {image: example/o}\n"
        "  output: [{path: /output}]\n- name: segment",
    )
    definition = resolve_template(text, {"series-from": "other-reader"})
    assert definition.operator("segment").upstream == {"other-reader"}


def test_text_fields_keep_the_filled_in_text() -> None:
    # tag is text (as `tag: 0.10` is): "0.10" stays "0.10" even unquoted; a number field
    # such as timeout reads its placeholder as YAML reads a number.
    definition = resolve_template(TEMPLATE, {"image-tag": "0.10", "wait": "90.5"})
    assert definition.operator("dicom-reader").container.tag == "0.10"
    assert definition.operator("segment").timeout == datetime.timedelta(seconds=90.5)
    expect_error({"wait": "soon"}, TEMPLATE, "segment", "timeout", "got string 'soon'")


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\0")))
def test_any_argument_value_lands_verbatim_in_its_field(value: str) -> None:
    definition = resolve_template(TEMPLATE, {"model": value})
    assert definition.operator("segment").variables["MODEL"] == value


def test_an_argument_with_a_nul_is_refused() -> None:
    expect_error({"model": "a\0b"}, TEMPLATE, None, None, "NUL")


def test_an_argument_naming_no_parameter_is_refused() -> None:
    expect_error({"Colour": "red"}, TEMPLATE, None, "parameters", "argument 'Colour' matches no")


def test_twice_given_arguments_are_refused() -> None:
    expect_error({"wait": "1", "WAIT": "2"}, TEMPLATE, None, None, "given twice")


def test_a_placeholder_without_a_parameter_names_operator_and_field() -> None:
    text = TEMPLATE.replace("image: example/segment", "image: ${{ registry }}/segment")
    expect_error({}, text, "segment", "container.image", "placeholder ${{ registry }} names no")


def test_an_operator_parameter_fills_only_its_own_operator() -> None:
    text = TEMPLATE.replace("image: example/dicom-reader", "image: example/${{ model }}")
    expect_error({}, text, "dicom-reader", "container.image", "${{ model }} names no parameter")
    assert resolve_template(text, {"model": "m"}).operators[0].container.image == "example/m"


@pytest.mark.parametrize(
    ("replacement", "fragment"),
    [("${{ two words }}", "malformed template placeholder"), ("${{ open", "unclosed")],
)
def test_malformed_placeholders_are_refused(replacement: str, fragment: str) -> None:
    text = TEMPLATE.replace("MODEL: ${{ model }}", f"MODEL: '{replacement}'")
    expect_error({}, text, "segment", "variables.MODEL", fragment)


def test_unquoted_placeholder_inside_a_flow_collection_gets_a_hint() -> None:
    text = TEMPLATE.replace('"--model=${{model}}"', "${{ model }}")
    expect_error({}, text, None, None, "inside [...] or {...} must be quoted")


def test_parameters_are_validated() -> None:
    expect_error(
        {},
        TEMPLATE.replace("  wait: 120", "  bad name: 1"),
        None,
        "parameters.bad name",
        "invalid parameter name",
    )
    expect_error(
        {},
        TEMPLATE.replace("  wait: 120", "  WAIT: 1\n  wait: 2"),
        None,
        "parameters.wait",
        "declared twice",
    )


def test_a_non_scalar_default_is_a_warning_until_a_placeholder_needs_it() -> None:
    text = TEMPLATE.replace("  wait: 120", "  wait: 120\n  extra: [1, 2]")
    definition = parse_pipeline_definition(text)
    assert definition.warnings == (
        "field 'parameters.extra': the default is not a scalar (parameters are expected to be "
        "strings); a placeholder naming this parameter needs an argument",
    )
    assert "extra" not in definition.parameters
    used = text.replace("MODEL: ${{ model }}", "MODEL: ${{ extra }}")
    expect_error({}, used, "segment", "variables.MODEL", "default of parameter 'extra' is not")
    assert resolve_template(used, {"extra": "x"}).operator("segment").variables["MODEL"] == "x"


def test_parameter_defaults_are_not_themselves_templates() -> None:
    text = TEMPLATE.replace("  wait: 120", '  wait: 120\n  note: "${{ wait }}"')
    assert parse_pipeline_definition(text).parameters["note"] == "${{ wait }}"


def test_filled_in_values_are_bounded_by_the_size_limit() -> None:
    words = ", ".join(f'"${{{{ model }}}}{i}"' for i in range(40))
    text = TEMPLATE.replace('["segment", "--model=${{model}}"', f'["segment", {words}')
    big = "m" * (MAX_DEFINITION_BYTES // 32)
    expect_error({"model": big}, text, "segment", "container.command[32]", "larger than the limit")


def test_yaml_aliases_are_resolved_per_use() -> None:
    text = TEMPLATE.replace("    MODEL: ${{ model }}", "    MODEL: &m ${{ model }}\n    COPY: *m")
    variables = resolve_template(text, {"model": "v3"}).operator("segment").variables
    assert variables == {"MODEL": "v3", "COPY": "v3"}


PLACEHOLDERISH = st.text(alphabet=st.sampled_from(list("${} ab-_\n")), max_size=30)
ARGUMENTS = st.dictionaries(
    st.sampled_from(["model", "wait", "MODEL", "x"]),
    st.text(alphabet=st.characters(blacklist_characters="$\0"), max_size=10),
)


@settings(max_examples=150, deadline=None)
@given(PLACEHOLDERISH, ARGUMENTS)
def test_fuzz_placeholders_resolve_or_are_refused(fragment: str, arguments: dict[str, str]) -> None:
    text = TEMPLATE.replace("MODEL: ${{ model }}", f"MODEL: {json.dumps(fragment)}")
    try:
        definition = resolve_template(text, arguments)
    except PipelineDefinitionError as error:
        assert str(error)
    else:
        assert "${{" not in definition.operator("segment").variables["MODEL"]
