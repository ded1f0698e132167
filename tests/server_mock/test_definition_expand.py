"""``$(VAR)`` expansion in container commands, with Kubernetes' rules."""

from __future__ import annotations

import pytest

from server_mock._definition import expand_command

ENV = {"NVIDIA_CLARA_SERVICE_DATA_PATH": "/clara/common", "A": "1", "EMPTY": "", "B": "$(A)"}


@pytest.mark.parametrize(
    ("word", "expanded"),
    [
        (
            "--model-store=$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models",
            "--model-store=/clara/common/models",
        ),
        ("$(A)$(A)", "11"),
        ("x$(EMPTY)y", "xy"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),  # unknown: left as written
        ("$$(A)", "$(A)"),  # escaped: never expanded
        ("$$$(A)", "$1"),
        ("$$", "$"),
        ("cost: 5$", "cost: 5$"),  # a trailing $ stays
        ("$A ${A}", "$A ${A}"),  # shell syntax means nothing
        ("$(A", "$(A"),  # unclosed: left as written
        ("$(A$(A)", "$(A$(A)"),  # the name runs to the first ')': "A$(A" is unknown
        ("$(B)", "$(A)"),  # values are not expanded again
        ("$()", "$()"),
        ("no references", "no references"),
    ],
)
def test_kubernetes_expansion_rules(word: str, expanded: str) -> None:
    assert expand_command([word], ENV) == [expanded]


def test_words_are_never_split_and_the_input_is_not_changed() -> None:
    argv = ["sh", "-c", "echo $(A) && ls $(NVIDIA_CLARA_SERVICE_DATA_PATH)"]
    assert expand_command(argv, ENV) == ["sh", "-c", "echo 1 && ls /clara/common"]
    assert argv[2] == "echo $(A) && ls $(NVIDIA_CLARA_SERVICE_DATA_PATH)"
    assert expand_command((w for w in ["$(A)"]), {}) == ["$(A)"]
