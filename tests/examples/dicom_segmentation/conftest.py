"""Fixtures of the dicom_segmentation tests: the example's modules, and the committed phantom."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from _dicom_example import (
    EXAMPLE,
    OPERATORS,
)


def _load(mp: pytest.MonkeyPatch, name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name``; the sys.modules entry is undone with ``mp``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ex() -> Iterator[SimpleNamespace]:
    """The example's modules, imported with its folders on a temporary sys.path.

    Operators get unique module names (no clash with other tests' modules); the helpers keep
    the names the operators import them by.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "path", [str(OPERATORS), str(EXAMPLE), *sys.path])
        common = _load(mp, "common", OPERATORS / "common.py")
        series = _load(mp, "dicom_series", OPERATORS / "dicom_series.py")
        yield SimpleNamespace(
            common=common,
            series=series,
            reader=_load(mp, "dicomseg_dicom_reader", OPERATORS / "dicom_reader.py"),
            segment=_load(mp, "dicomseg_segment", OPERATORS / "segment.py"),
            seg_writer=_load(mp, "dicomseg_seg_writer", OPERATORS / "seg_writer.py"),
            stats=_load(mp, "dicomseg_component_stats", OPERATORS / "component_stats.py"),
            report=_load(mp, "dicomseg_report", OPERATORS / "report.py"),
            make_input=_load(mp, "dicomseg_make_input", EXAMPLE / "make_input.py"),
        )


@pytest.fixture(scope="module")
def committed(ex: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The phantom of the committed input (regenerated elsewhere, to know its voxels)."""
    return ex.make_input.write_series(tmp_path_factory.mktemp("committed"))
