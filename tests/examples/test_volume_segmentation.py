"""Tests of the examples/volume_segmentation operators' pure functions, without a driver."""

from __future__ import annotations

import array
import importlib.util
import math
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "volume_segmentation"
OPERATORS = EXAMPLE / "operators"


def _load(mp: pytest.MonkeyPatch, name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name``; the sys.modules entry is undone with ``mp``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vs() -> Iterator[SimpleNamespace]:
    """The example's modules, imported with the example folders on a temporary sys.path.

    Modules get unique names (so they cannot clash with other tests' modules) except
    ``common``, which the operators import by that name.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "path", [str(OPERATORS), str(EXAMPLE), *sys.path])
        common = _load(mp, "common", OPERATORS / "common.py")
        yield SimpleNamespace(
            common=common,
            load_volume=_load(mp, "volseg_load_volume", OPERATORS / "load_volume.py"),
            segment=_load(mp, "volseg_segment", OPERATORS / "segment.py"),
            statistics=_load(mp, "volseg_statistics", OPERATORS / "intensity_stats.py"),
            report=_load(mp, "volseg_report", OPERATORS / "report.py"),
            make_input=_load(mp, "volseg_make_input", EXAMPLE / "make_input.py"),
        )


@pytest.fixture(scope="module")
def variables() -> dict[str, dict[str, str]]:
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    return {op["name"]: op.get("variables", {}) for op in pipeline["operators"]}


def make_volume(
    vs: SimpleNamespace,
    dims: tuple[int, int, int],
    voxels: dict[tuple[int, int, int], int],
    element_type: str = "MET_USHORT",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Any:
    volume = vs.common.empty_volume(dims, spacing, element_type)
    for (x, y, z), value in voxels.items():
        volume.data[volume.index(x, y, z)] = value
    return volume


# ----------------------------------------------------------------------------- MetaImage


@pytest.mark.parametrize("element_type", ["MET_USHORT", "MET_UCHAR"])
def test_metaimage_round_trip(vs: SimpleNamespace, tmp_path: Path, element_type: str) -> None:
    top = 65535 if element_type == "MET_USHORT" else 255
    voxels = {(0, 0, 0): top, (2, 1, 0): 7, (1, 2, 3): 1}
    volume = make_volume(vs, (3, 4, 5), voxels, element_type, spacing=(0.7, 0.75, 2.5))

    path = vs.common.write_mhd(tmp_path / "v.mhd", volume)

    header = path.read_text().splitlines()
    assert header[0] == "ObjectType = Image"
    assert "NDims = 3" in header
    assert "DimSize = 3 4 5" in header
    assert "ElementSpacing = 0.7 0.75 2.5" in header
    assert f"ElementType = {element_type}" in header
    assert "BinaryData = True" in header
    assert "BinaryDataByteOrderMSB = False" in header
    assert header[-1] == "ElementDataFile = v.raw"
    itemsize = 2 if element_type == "MET_USHORT" else 1
    raw = (tmp_path / "v.raw").read_bytes()
    assert len(raw) == 60 * itemsize
    if itemsize == 2:  # little-endian on disk
        assert raw[:2] == b"\xff\xff"
        assert raw[2 * volume.index(2, 1, 0) : 2 * volume.index(2, 1, 0) + 2] == b"\x07\x00"

    loaded = vs.common.read_mhd(path)
    assert loaded == volume
    assert loaded.voxel_volume_mm3 == pytest.approx(0.7 * 0.75 * 2.5)


VALID_HEADER = {
    "ObjectType": "Image",
    "NDims": "3",
    "BinaryData": "True",
    "BinaryDataByteOrderMSB": "False",
    "ElementSpacing": "1 1 2",
    "DimSize": "2 2 2",
    "ElementType": "MET_USHORT",
    "ElementDataFile": "v.raw",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ObjectType": "Mesh"}, "ObjectType must be Image"),
        ({"NDims": "2"}, "NDims must be 3"),
        ({"DimSize": "2 2"}, "DimSize must be 3 positive sizes"),
        ({"DimSize": "2 0 2"}, "DimSize must be 3 positive sizes"),
        ({"DimSize": "2 x 2"}, "DimSize must be integers"),
        ({"ElementSpacing": "1 -1 2"}, "ElementSpacing must be 3 positive values"),
        ({"ElementSpacing": "1 nan 2"}, "ElementSpacing must be finite"),
        ({"ElementType": "MET_FLOAT"}, "ElementType 'MET_FLOAT' is not supported"),
        ({"BinaryData": "False"}, "ASCII data"),
        ({"BinaryDataByteOrderMSB": "True"}, "big-endian"),
        ({"BinaryDataByteOrderMSB": "maybe"}, "must be True or False"),
        ({"CompressedData": "True"}, "CompressedData"),
        ({"ElementDataFile": "LOCAL"}, "not supported"),
        ({"ElementDataFile": "../v.raw"}, "next to the header"),
        ({"ElementType": None}, "missing header key(s): ElementType"),
        ({"ObjectType": None, "DimSize": None}, "missing header key(s): ObjectType, DimSize"),
    ],
)
def test_metaimage_header_validation(
    vs: SimpleNamespace, tmp_path: Path, changes: dict[str, str | None], message: str
) -> None:
    fields = {**VALID_HEADER, **changes}
    text = "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)
    (tmp_path / "v.mhd").write_text(text)
    (tmp_path / "v.raw").write_bytes(bytes(16))
    with pytest.raises(vs.common.MetaImageError, match=re.escape(message)):
        vs.common.read_mhd(tmp_path / "v.mhd")


def test_metaimage_valid_header_reads(vs: SimpleNamespace, tmp_path: Path) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in VALID_HEADER.items())
    (tmp_path / "v.mhd").write_text(text + "\n")  # a trailing blank line is fine
    (tmp_path / "v.raw").write_bytes(bytes(range(16)))
    volume = vs.common.read_mhd(tmp_path / "v.mhd")
    assert volume.dims == (2, 2, 2)
    assert volume.spacing == (1.0, 1.0, 2.0)
    assert list(volume.data) == [0x0100, 0x0302, 0x0504, 0x0706, 0x0908, 0x0B0A, 0x0D0C, 0x0F0E]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ObjectType = Image\nNDims\n", "line 2: expected 'Key = Value'"),
        ("NDims = 3\nNDims = 3\n", "line 2: duplicate key 'NDims'"),
    ],
)
def test_metaimage_malformed_header(vs: SimpleNamespace, text: str, message: str) -> None:
    with pytest.raises(vs.common.MetaImageError, match=message):
        vs.common.parse_header(text)


def test_metaimage_data_file_problems(vs: SimpleNamespace, tmp_path: Path) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in VALID_HEADER.items())
    (tmp_path / "v.mhd").write_text(text)
    with pytest.raises(vs.common.MetaImageError, match=r"data file 'v\.raw' not found"):
        vs.common.read_mhd(tmp_path / "v.mhd")
    (tmp_path / "v.raw").write_bytes(bytes(15))
    with pytest.raises(vs.common.MetaImageError, match="15 bytes, expected 16"):
        vs.common.read_mhd(tmp_path / "v.mhd")


def test_volume_rejects_inconsistent_data(vs: SimpleNamespace) -> None:
    with pytest.raises(vs.common.MetaImageError, match="7 values for 2x2x2"):
        vs.common.Volume((2, 2, 2), (1.0, 1.0, 1.0), "MET_USHORT", array.array("H", [0] * 7))
    with pytest.raises(vs.common.MetaImageError, match="does not match MET_UCHAR"):
        vs.common.Volume((1, 1, 1), (1.0, 1.0, 1.0), "MET_UCHAR", array.array("H", [0]))


# ----------------------------------------------------------------------------- make_input


def test_make_input_is_deterministic_and_committed(vs: SimpleNamespace, tmp_path: Path) -> None:
    first = vs.make_input.write_input(tmp_path / "a")
    second = vs.make_input.write_input(tmp_path / "b")
    for name in ("volume.mhd", "volume.raw"):
        data = (first.parent / name).read_bytes()
        assert data == (second.parent / name).read_bytes()
        assert data == (EXAMPLE / "input" / name).read_bytes(), f"re-run make_input.py ({name})"
    assert (EXAMPLE / "input" / "volume.raw").stat().st_size < 200_000
    other = vs.make_input.generate_volume(seed=1)
    assert other.data != vs.common.read_mhd(first).data


# ----------------------------------------------------------------------------- segment


def test_label_components_uses_6_connectivity(vs: SimpleNamespace) -> None:
    dims = (4, 3, 2)
    a = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)]  # joined through faces, incl. along z
    edge = [(2, 2, 0)]  # shares only an edge with (1, 1, 0)
    alone = [(3, 0, 1)]
    corner = [(3, 2, 1)]  # shares only an edge with (2, 2, 0)
    volume = make_volume(vs, dims, dict.fromkeys(a + edge + alone + corner, 1), "MET_UCHAR")
    mask = bytearray(volume.data)

    labels, count = vs.segment.label_components(mask, dims)

    def label_of(voxel: tuple[int, int, int]) -> int:
        return labels[volume.index(*voxel)]

    assert count == 4
    assert {label_of(v) for v in a} == {1}
    # Labels follow the first voxel of each component in x-fastest order.
    assert [label_of(edge[0]), label_of(alone[0]), label_of(corner[0])] == [2, 3, 4]
    assert sum(1 for label in labels if label) == 7


def test_diagonal_neighbour_is_a_separate_component(vs: SimpleNamespace) -> None:
    dims = (3, 3, 3)
    cube = {(0, 0, 0): 60000, (1, 0, 0): 60000, (0, 1, 0): 60000, (1, 1, 0): 60000}
    diagonal = {(2, 2, 1): 50000}  # shares only a corner with (1, 1, 0)
    edge = {(2, 1, 1): 40000}  # shares only an edge with (1, 1, 0); a face with (2, 2, 1)
    volume = make_volume(vs, dims, {**cube, **diagonal, **edge, (0, 2, 2): 100})

    labels, document = vs.segment.segment_volume(volume, threshold=0.5)

    assert document["cutoff"] == 32768
    assert document["count"] == 2
    first, second = document["components"]
    assert first == {
        "label": 1,
        "voxels": 4,
        "bbox": {"min": [0, 0, 0], "max": [1, 1, 0]},
        "centroid": [0.5, 0.5, 0.0],
        "mean_intensity": round(60000 / 65535, 4),
    }
    assert second["voxels"] == 2
    assert second["bbox"] == {"min": [2, 1, 1], "max": [2, 2, 1]}
    assert labels.element_type == "MET_UCHAR"
    assert labels.data[labels.index(1, 1, 0)] == 1
    assert labels.data[labels.index(2, 2, 1)] == 2
    assert labels.data[labels.index(0, 2, 2)] == 0  # below the threshold


def test_segment_discards_small_components_and_orders_by_size(vs: SimpleNamespace) -> None:
    voxels = {(0, 0, 0): 65535, (3, 0, 0): 65535, (3, 1, 0): 65535, (3, 2, 0): 65535}
    volume = make_volume(vs, (4, 3, 1), voxels)

    labels, document = vs.segment.segment_volume(volume, threshold=1.0, min_component_voxels=2)

    assert (document["count"], document["discarded"]) == (1, 1)
    assert document["foreground_voxels"] == 4
    assert document["components"][0]["voxels"] == 3
    assert labels.data[0] == 0  # the discarded single voxel
    assert set(labels.data) == {0, 1}


def test_label_components_large_component_without_recursion(vs: SimpleNamespace) -> None:
    dims = (64, 64, 16)
    labels, count = vs.segment.label_components(b"\x01" * (64 * 64 * 16), dims)
    assert count == 1
    assert min(labels) == 1


def test_threshold_cutoff(vs: SimpleNamespace) -> None:
    assert vs.segment.threshold_cutoff(0.5) == 32768
    assert vs.segment.threshold_cutoff(1.0) == 65535
    assert vs.segment.threshold_cutoff(0.4) == 26214
    assert vs.segment.threshold_mask([26213, 26214, 65535], 26214) == bytearray([0, 1, 1])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"THRESHOLD": "abc"}, "THRESHOLD must be a number"),
        ({"THRESHOLD": "1.5"}, "THRESHOLD must be <= 1.0"),
        ({"THRESHOLD": "0"}, "THRESHOLD must be greater than 0"),
        ({"MIN_COMPONENT_VOXELS": "0"}, "MIN_COMPONENT_VOXELS must be >= 1"),
        ({"MIN_COMPONENT_VOXELS": "2.5"}, "MIN_COMPONENT_VOXELS must be an integer"),
    ],
)
def test_segment_config_errors(vs: SimpleNamespace, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vs.segment.SegmentConfig.from_env(env)


def test_configs_defaults_and_errors(vs: SimpleNamespace) -> None:
    assert vs.segment.SegmentConfig.from_env({}) == vs.segment.SegmentConfig(0.5, 1)
    assert vs.load_volume.LoadConfig.from_env({"WINDOW_MIN": " "}).window_min is None
    with pytest.raises(ValueError, match=r"WINDOW_MAX \(10\) must be greater than WINDOW_MIN"):
        vs.load_volume.LoadConfig.from_env({"WINDOW_MIN": "10", "WINDOW_MAX": "10"})
    with pytest.raises(ValueError, match=r"INPUT_FILE must be a \.mhd file name"):
        vs.load_volume.LoadConfig.from_env({"INPUT_FILE": "../volume.mhd"})
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        vs.statistics.StatisticsConfig.from_env({"PERCENTILES": "50,101"})
    with pytest.raises(ValueError, match="comma-separated numbers"):
        vs.statistics.StatisticsConfig.from_env({"PERCENTILES": "50;90"})
    with pytest.raises(ValueError, match="HISTOGRAM_BINS must be >= 1"):
        vs.statistics.StatisticsConfig.from_env({"HISTOGRAM_BINS": "0"})
    assert (
        vs.report.ReportConfig.from_env({"REPORT_TITLE": ""}).title == "Volume segmentation report"
    )


# ----------------------------------------------------------------------------- load-volume


def test_normalize_windows_and_scales(vs: SimpleNamespace) -> None:
    volume = make_volume(
        vs, (4, 1, 1), {(0, 0, 0): 0, (1, 0, 0): 100, (2, 0, 0): 150, (3, 0, 0): 400}
    )

    windowed, window = vs.load_volume.normalize(volume, 100, 200)
    assert window == (100, 200)
    assert list(windowed.data) == [0, 0, 32768, 65535]  # clamped to the window

    automatic, window = vs.load_volume.normalize(volume)
    assert window == (0.0, 400.0)
    assert list(automatic.data) == [0, 16384, 24576, 65535]

    flat, _ = vs.load_volume.normalize(make_volume(vs, (2, 1, 1), {(0, 0, 0): 5, (1, 0, 0): 5}))
    assert list(flat.data) == [0, 0]


def test_load_volume_needs_exactly_one_mhd(vs: SimpleNamespace, tmp_path: Path) -> None:
    config = vs.load_volume.LoadConfig()
    with pytest.raises(FileNotFoundError, match="found none"):
        vs.load_volume.run(tmp_path, tmp_path, config)
    volume = make_volume(vs, (1, 1, 1), {})
    vs.common.write_mhd(tmp_path / "a.mhd", volume)
    vs.common.write_mhd(tmp_path / "b.mhd", volume)
    with pytest.raises(FileNotFoundError, match=r"found a\.mhd, b\.mhd"):
        vs.load_volume.find_volume(tmp_path)
    assert vs.load_volume.find_volume(tmp_path, "b.mhd").name == "b.mhd"


# ----------------------------------------------------------------------------- statistics


def test_percentile_and_histogram(vs: SimpleNamespace) -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert [vs.statistics.percentile(values, p) for p in (0, 25, 50, 100)] == [1.0, 1.75, 2.5, 4.0]
    assert vs.statistics.percentile([7.0], 90) == 7.0
    assert vs.statistics.histogram(values, 3, 1.0, 4.0) == [1, 1, 2]  # the last bin includes 4
    assert vs.statistics.histogram([-5.0, 9.0], 2, 0.0, 1.0) == [1, 1]  # out of range: clamped


def test_summarize_known_values(vs: SimpleNamespace) -> None:
    summary = vs.statistics.summarize(
        [4.0, 2.0, 1.0, 3.0], bins=3, percentiles=(50, 25), value_range=(1.0, 4.0)
    )
    assert summary["count"] == 4
    assert (summary["min"], summary["max"], summary["mean"]) == (1.0, 4.0, 2.5)
    assert summary["std"] == round(math.sqrt(1.25), 4)
    assert summary["percentiles"] == {"50": 2.5, "25": 1.75}
    assert summary["histogram"] == {
        "range": [1.0, 4.0],
        "edges": [1.0, 2.0, 3.0, 4.0],
        "counts": [1, 1, 2],
    }


def test_statistics_run_maps_back_to_source_units(vs: SimpleNamespace, tmp_path: Path) -> None:
    volume = make_volume(
        vs, (2, 2, 1), {(0, 0, 0): 0, (1, 0, 0): 65535, (0, 1, 0): 65535, (1, 1, 0): 0}
    )
    vs.common.write_mhd(tmp_path / "volume.mhd", volume)
    vs.common.write_json(tmp_path / "metadata.json", {"window": [100, 300], "source": "x.mhd"})
    out = tmp_path / "out"
    out.mkdir()

    config = vs.statistics.StatisticsConfig(bins=2, percentiles=(50.0,))
    document = vs.statistics.run(tmp_path, out, config)

    assert document == vs.common.read_json(out / "statistics.json")
    assert document["source"] == "x.mhd"
    assert document["intensity"]["mean"] == 200.0
    assert document["intensity"]["std"] == 100.0
    assert document["intensity"]["histogram"]["counts"] == [2, 2]
    assert document["normalized"]["percentiles"] == {"50": 0.5}


# ----------------------------------------------------------------------------- report


COMPONENTS = {
    "threshold": 0.4,
    "cutoff": 26214,
    "connectivity": 6,
    "min_component_voxels": 5,
    "dims": [10, 10, 10],
    "spacing_mm": [0.5, 0.5, 2.0],
    "count": 2,
    "discarded": 1,
    "components": [
        {
            "label": 1,
            "voxels": 4000,
            "bbox": {"min": [0, 0, 0], "max": [9, 9, 9]},
            "centroid": [4.5, 4.5, 4.5],
            "mean_intensity": 0.5,
        },
        {
            "label": 2,
            "voxels": 10,
            "bbox": {"min": [1, 2, 3], "max": [2, 3, 4]},
            "centroid": [1.5, 2.5, 3.5],
            "mean_intensity": 1.0,
        },
    ],
}
STATISTICS = {
    "source": "scan.mhd",
    "window": [1000.0, 1200.0],
    "intensity": {
        "count": 1000,
        "min": 1000.0,
        "max": 1200.0,
        "mean": 1050.5,
        "std": 20.25,
        "percentiles": {"5": 1001.0, "50": 1040.0, "95": 1190.0},
        "histogram": {"range": [1000.0, 1200.0], "edges": [1000.0, 1200.0], "counts": [1000]},
    },
}


def test_build_report_from_small_inputs(vs: SimpleNamespace) -> None:
    config = vs.report.ReportConfig(title="Test report", lesion_max_volume_mm3=100.0)

    report = vs.report.build_report(COMPONENTS, STATISTICS, config, {"id": "j-1", "name": "demo"})

    assert report["voxel_volume_mm3"] == 0.5
    organ, lesion = report["components"]
    assert (organ["class"], organ["volume_mm3"], organ["volume_ml"]) == ("organ", 2000.0, 2.0)
    assert organ["extent_mm"] == [5.0, 5.0, 20.0]
    assert organ["centroid_mm"] == [2.25, 2.25, 9.0]
    assert organ["mean_intensity"] == 1100.0
    assert (lesion["class"], lesion["volume_mm3"], lesion["mean_intensity"]) == (
        "lesion candidate",
        5.0,
        1200.0,
    )
    assert report["findings"] == {
        "organs": 1,
        "lesion_candidates": 1,
        "lesion_max_volume_mm3": 100.0,
        "segmented_volume_mm3": 2005.0,
    }
    assert report["segmentation"]["discarded"] == 1

    markdown = vs.report.render_markdown(report)
    assert markdown.startswith("# Test report\n")
    assert "- Job: demo (`j-1`)" in markdown
    assert "spacing 0.5 x 0.5 x 2 mm (0.5 mm³ per voxel)" in markdown
    assert "| 1 | organ | 4000 | 2000.0 | 2.00 | (2.25, 2.25, 9) | 5 x 5 x 20 | 1100 |" in markdown
    assert (
        "| 2 | lesion candidate | 10 | 5.0 | 0.01 | (0.75, 1.25, 7) | 1 x 1 x 4 | 1200 |"
        in markdown
    )
    assert "| P50 | 1040 |" in markdown
    assert markdown.index("| P5 |") < markdown.index("| P50 |") < markdown.index("| P95 |")


def test_report_without_components(vs: SimpleNamespace) -> None:
    components = {**COMPONENTS, "count": 0, "components": []}
    report = vs.report.build_report(components, STATISTICS, vs.report.ReportConfig())
    assert report["job"] is None
    assert report["findings"]["organs"] == report["findings"]["lesion_candidates"] == 0
    assert "No components above the threshold." in vs.report.render_markdown(report)


def fake_driver(stage: str) -> SimpleNamespace:
    return SimpleNamespace(
        job_id=uuid.UUID(int=7),
        job_name="demo-job",
        stage_name=stage,
        stage_timeout=timedelta(seconds=120),
        app_data=None,
    )


def entry(path: Path, from_stage: str = "", name: str = "") -> SimpleNamespace:
    path.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(name=name, path=str(path), from_stage=from_stage)


def test_report_execute_finds_inputs_by_from_stage(
    vs: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("REPORT_TITLE", "From the environment")
    monkeypatch.delenv("LESION_MAX_VOLUME_MM3", raising=False)
    statistics_in = entry(tmp_path / "in-stats", "statistics", "statistics")
    segment_in = entry(tmp_path / "in-seg", "segment", "segmentation")
    vs.common.write_json(Path(segment_in.path) / "components.json", COMPONENTS)
    vs.common.write_json(Path(statistics_in.path) / "statistics.json", STATISTICS)
    output = entry(tmp_path / "out")
    payload = SimpleNamespace(input_entries=(statistics_in, segment_in), output_entries=(output,))

    assert vs.report.execute(fake_driver("report"), payload) is True

    report = vs.common.read_json(tmp_path / "out" / "report.json")
    assert report["title"] == "From the environment"
    assert report["job"] == {"id": str(uuid.UUID(int=7)), "name": "demo-job"}
    assert (tmp_path / "out" / "report.md").read_text().startswith("# From the environment")
    assert capsys.readouterr().out.startswith("report: 1 organ(s), 1 lesion candidate(s)")

    payload = SimpleNamespace(input_entries=(segment_in,), output_entries=(output,))
    assert vs.report.execute(fake_driver("report"), payload) is False  # no statistics input


def test_payload_entry_lookup(vs: SimpleNamespace, tmp_path: Path) -> None:
    job = entry(tmp_path / "job")
    labels = entry(tmp_path / "labels", "segment", "labels")
    extra = entry(tmp_path / "extra", "segment", "extra")
    assert vs.common.input_folder((labels,)) == tmp_path / "labels"  # the only one
    assert vs.common.input_folder((job, labels), "") == tmp_path / "job"
    with pytest.raises(LookupError, match="more than one input entry "):
        vs.common.input_folder((job, labels))
    assert vs.common.input_folder((job, labels), "segment") == tmp_path / "labels"  # any name
    assert vs.common.input_folder((job, labels, extra), "segment", "extra") == tmp_path / "extra"
    with pytest.raises(LookupError, match="more than one input entry from segment"):
        vs.common.input_folder((job, labels, extra), "segment")
    with pytest.raises(LookupError, match=r"no input entry from statistics \(entries: <job>:<unn"):
        vs.common.input_folder((job, labels), "statistics")
    with pytest.raises(LookupError, match="no input entry from segment named <unnamed>"):
        vs.common.input_folder((job, labels), "segment", "")

    assert vs.common.output_folder((labels,)) == tmp_path / "labels"
    assert vs.common.output_folder((job, labels), "") == tmp_path / "job"
    with pytest.raises(LookupError, match="more than one output entry"):
        vs.common.output_folder((job, labels))
    with pytest.raises(LookupError, match="no output entry named x"):
        vs.common.output_folder((job, labels), "x")


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_definition_wiring(
    vs: SimpleNamespace, variables: dict[str, dict[str, str]]
) -> None:
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    assert pipeline["api-version"] == "0.4.0"
    operators = {op["name"]: op for op in pipeline["operators"]}
    assert list(operators) == ["load-volume", "segment", "statistics", "report"]
    sources = {
        name: [(i.get("from", ""), i.get("name")) for i in op["input"]]
        for name, op in operators.items()
    }
    assert sources == {
        "load-volume": [("", None)],
        "segment": [("load-volume", None)],
        "statistics": [("load-volume", None)],
        "report": [("segment", "segmentation"), ("statistics", "statistics")],
    }
    outputs = {name: [o.get("name") for o in op["output"]] for name, op in operators.items()}
    assert outputs == {
        "load-volume": [None],
        "segment": ["segmentation"],
        "statistics": ["statistics"],
        "report": [None],
    }
    for name, op in operators.items():
        container = op["container"]
        assert container["image"] == f"clara-examples/{name}"
        assert container["tag"] == "0.1"
        assert container["command"][0] == "python"
        assert (EXAMPLE / container["command"][1]).is_file()
        assert [o["path"] for o in op["output"]] == ["/output"]
        assert all(isinstance(v, str) for v in op.get("variables", {}).values())
    # Every variable set in the pipeline is valid for its operator.
    vs.load_volume.LoadConfig.from_env(variables["load-volume"])
    vs.segment.SegmentConfig.from_env(variables["segment"])
    vs.statistics.StatisticsConfig.from_env(variables["statistics"])
    vs.report.ReportConfig.from_env(variables["report"])


def test_whole_chain_on_committed_input(
    vs: SimpleNamespace, tmp_path: Path, variables: dict[str, dict[str, str]]
) -> None:
    folders = {name: tmp_path / name for name in ("load", "segment", "statistics", "report")}
    for folder in folders.values():
        folder.mkdir()

    metadata = vs.load_volume.run(
        EXAMPLE / "input",
        folders["load"],
        vs.load_volume.LoadConfig.from_env(variables["load-volume"]),
    )
    components = vs.segment.run(
        folders["load"], folders["segment"], vs.segment.SegmentConfig.from_env(variables["segment"])
    )
    statistics = vs.statistics.run(
        folders["load"],
        folders["statistics"],
        vs.statistics.StatisticsConfig.from_env(variables["statistics"]),
    )
    report = vs.report.run(
        folders["segment"],
        folders["statistics"],
        folders["report"],
        vs.report.ReportConfig.from_env(variables["report"]),
    )

    assert metadata["dims"] == [48, 48, 32]
    assert metadata["window"] == [900.0, 1600.0]
    normalized = vs.common.read_mhd(folders["load"] / "volume.mhd")
    assert normalized.element_type == "MET_USHORT"
    assert max(normalized.data) == 65535

    # The organs and the lesion are found exactly; the three bright specks are discarded.
    phantom = vs.make_input
    expected = [(s, s.voxel_count()) for s in (*phantom.ORGANS, phantom.LESION)]
    assert [c["voxels"] for c in components["components"]] == [n for _, n in expected]
    for component, (structure, _) in zip(components["components"], expected, strict=True):
        assert component["centroid"] == pytest.approx(list(structure.center), abs=0.05)
    assert components["discarded"] == len(phantom.SPECKS)
    labels = vs.common.read_mhd(folders["segment"] / "labels.mhd")
    assert labels.element_type == "MET_UCHAR"
    assert labels.spacing == phantom.SPACING
    assert set(labels.data) == {0, 1, 2, 3}

    percentiles = list(statistics["intensity"]["percentiles"].values())
    assert percentiles == sorted(percentiles)
    assert sum(statistics["intensity"]["histogram"]["counts"]) == 48 * 48 * 32

    assert report["findings"]["organs"] == 2
    assert report["findings"]["lesion_candidates"] == 1
    lesion = report["components"][2]
    assert lesion["class"] == "lesion candidate"
    assert lesion["volume_mm3"] == pytest.approx(expected[2][1] * 0.8 * 0.8 * 2.5, abs=0.1)
    assert lesion["mean_intensity"] == pytest.approx(phantom.LESION.intensity, abs=5)
    markdown = (folders["report"] / "report.md").read_text()
    assert "| 3 | lesion candidate |" in markdown
    assert markdown.count("| organ |") == 2
    assert vs.common.read_json(folders["report"] / "report.json") == report
