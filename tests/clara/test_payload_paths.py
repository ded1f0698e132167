"""NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS: the one format, written and read."""

from __future__ import annotations

import pytest

from clara.contract import format_payload_paths, parse_payload_paths


def test_a_single_unnamed_entry_splits_as_nvidias_operators_split_it() -> None:
    value = format_payload_paths([("", "/payload/input")])
    assert value == ":/payload/input"
    assert value.split(":")[1] == "/payload/input"


def test_a_single_named_entry_splits_the_same_way() -> None:
    value = format_payload_paths([("dcmout", "/payload/operators/check/output")])
    assert value == "dcmout:/payload/operators/check/output"
    assert value.split(":")[1] == "/payload/operators/check/output"


def test_several_entries_round_trip() -> None:
    entries = [("", "/in"), ("mask", "/in/mask"), ("stats", "/data/with:colon")]
    value = format_payload_paths(entries)
    assert value == ":/in;mask:/in/mask;stats:/data/with:colon"
    assert parse_payload_paths(value) == entries  # a path keeps everything after its first ':'


def test_a_path_holding_the_separator_cannot_be_listed() -> None:
    with pytest.raises(ValueError, match=r"'/odd;folder' contains ';'"):
        format_payload_paths([("", "/odd;folder")])


def test_a_malformed_name_cannot_be_listed() -> None:
    with pytest.raises(ValueError, match=r"name 'a b'"):
        format_payload_paths([("a b", "/x")])


def test_empty_entries_are_skipped_when_read() -> None:
    assert parse_payload_paths(":/in;") == [("", "/in")]
    assert parse_payload_paths("") == []
