"""Operator ``report``: the findings, from the DICOM SEG and the statistics, as JSON and Markdown.

Inputs: ``seg-writer``'s output (``seg.dcm``, ``seg.json``) and ``statistics``' output
(``statistics.json``), told apart by the stage they come from. Output: ``report.json`` and
``report.md``: each segment of the SEG (its number and label) with the volume of its
component in mm³ and mL, its HU statistics, centroid and extent.

The SEG is read back with highdicom and checked against the statistics before anything is
reported: it must reference the measured series, and each segment must hold as many voxels
as the component measured under its number. So the report describes the object that is
sent back to the PACS, not only what the pipeline meant to write.

Variables: ``REPORT_TITLE``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import highdicom as hd
import numpy as np

import clara

logger = logging.getLogger(__name__)

INPUT_SEG = "seg.dcm"
INPUT_SEG_SUMMARY = "seg.json"
INPUT_STATISTICS = "statistics.json"
OUTPUT_JSON = "report.json"
OUTPUT_MARKDOWN = "report.md"


@dataclass(frozen=True)
class ReportConfig:
    """The operator's variables."""

    title: str = "CT segmentation report"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReportConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator)."""
        return cls(title=common.env_text(env, "REPORT_TITLE", cls.title))


def read_seg(path: Path) -> dict[str, Any]:
    """What a DICOM SEG file holds: its UIDs, referenced series and segments.

    Each segment's ``voxels`` is counted from the SEG's frames (frames the SEG omits are
    empty).

    Raises:
        ValueError: The file is not a segmentation, or references no single series.
    """
    seg = hd.seg.segread(path)
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    if len(referenced) != 1:
        raise ValueError(f"{path.name} references {len(referenced)} series, expected one")
    source_uids = [sop_uid for _, _, sop_uid in seg.get_source_image_uids()]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, assert_missing_frames_are_empty=True
    )
    voxels = np.count_nonzero(pixels, axis=(0, 1, 2))
    segments = []
    for index, number in enumerate(seg.segment_numbers):
        description = seg.get_segment_description(number)
        segments.append(
            {
                "number": int(number),
                "label": str(description.segment_label),
                "description": str(description.get("SegmentDescription", "")),
                "voxels": int(voxels[index]),
            }
        )
    return {
        "file": path.name,
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "series_number": int(seg.SeriesNumber),
        "series_description": str(seg.get("SeriesDescription", "")),
        "referenced_series_instance_uid": referenced.pop(),
        "source_instances": len(source_uids),
        "frames": int(seg.NumberOfFrames),
        "segments": segments,
    }


def check_consistent(seg: Mapping[str, Any] | None, statistics: Mapping[str, Any]) -> None:
    """Check the SEG encodes the measured components.

    Raises:
        ValueError: Another series, other segment numbers, or other voxel counts.
    """
    components = statistics["components"]
    if seg is None:
        if components:
            raise ValueError(f"no {INPUT_SEG} but {len(components)} measured component(s)")
        return
    if seg["referenced_series_instance_uid"] != statistics["series_instance_uid"]:
        raise ValueError(
            f"{INPUT_SEG} references series {seg['referenced_series_instance_uid']}, the "
            f"statistics measured series {statistics['series_instance_uid']}"
        )
    in_seg = {s["number"]: s["voxels"] for s in seg["segments"]}
    measured = {c["label"]: c["voxels"] for c in components}
    if in_seg != measured:
        raise ValueError(
            f"{INPUT_SEG} segments (number: voxels) {in_seg} differ from the measured "
            f"components {measured}"
        )


def build_report(
    seg: Mapping[str, Any] | None,
    statistics: Mapping[str, Any],
    config: ReportConfig,
    job: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` document (see :func:`check_consistent` for what is checked)."""
    check_consistent(seg, statistics)
    labels = {s["number"]: s["label"] for s in seg["segments"]} if seg else {}
    components = [
        {"segment": c["label"], "segment_label": labels.get(c["label"], ""), **c}
        for c in statistics["components"]
    ]
    for component in components:
        del component["label"]
    return {
        "title": config.title,
        "job": dict(job) if job else None,
        "source_series_instance_uid": statistics["series_instance_uid"],
        "shape": statistics["shape"],
        "spacing_mm": statistics["spacing_mm"],
        "voxel_volume_mm3": statistics["voxel_volume_mm3"],
        "threshold_hu": statistics["threshold_hu"],
        "seg": dict(seg) if seg else None,
        "findings": {
            "count": statistics["count"],
            "total_volume_mm3": statistics["total_volume_mm3"],
        },
        "components": components,
    }


def _join(values: list[float], separator: str) -> str:
    return separator.join(f"{v:g}" for v in values)


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` for a :func:`build_report` document."""
    low, high = report["threshold_hu"]
    lines = [f"# {report['title']}", ""]
    if report["job"]:
        lines.append(f"- Job: {report['job'].get('name', '')} (`{report['job'].get('id', '')}`)")
    lines += [
        f"- Source series: `{report['source_series_instance_uid']}`, "
        f"{_join(report['shape'], ' x ')} voxels (slice, row, column), spacing "
        f"{_join(report['spacing_mm'], ' x ')} mm ({report['voxel_volume_mm3']:.4g} mm³ per voxel)",
        f"- Segmentation: {low:g}..{high:g} HU, connected components; "
        f"{report['findings']['count']} component(s), "
        f"{report['findings']['total_volume_mm3']:g} mm³ in all",
    ]
    seg = report["seg"]
    if seg:
        lines.append(
            f"- DICOM SEG: `{seg['file']}`, SOP instance `{seg['sop_instance_uid']}`, series "
            f"{seg['series_number']} `{seg['series_instance_uid']}`, {seg['frames']} frame(s), "
            f"referencing {seg['source_instances']} source instance(s)"
        )
    else:
        lines.append("- DICOM SEG: none (no component to encode)")
    lines += ["", "## Components", ""]
    if not report["components"]:
        lines.append("No component within the threshold.")
        return "\n".join(lines) + "\n"
    lines += [
        "| Segment | Label | Voxels | Volume (mm³) | Volume (mL) | HU mean ± SD | HU range "
        "| Centroid (mm, patient) | Extent (mm) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in report["components"]:
        hu = row["hu"]
        lines.append(
            f"| {row['segment']} | {row['segment_label']} | {row['voxels']} "
            f"| {row['volume_mm3']:.1f} | {row['volume_ml']:.3f} "
            f"| {hu['mean']:.1f} ± {hu['std']:.1f} | {hu['min']:g}..{hu['max']:g} "
            f"| ({_join(row['centroid_mm'], ', ')}) | {_join(row['extent_mm'], ' x ')} |"
        )
    return "\n".join(lines) + "\n"


def run(
    seg_dir: Path,
    statistics_dir: Path,
    output_dir: Path,
    config: ReportConfig,
    job: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Read the SEG and the statistics; write ``report.json`` and ``report.md``."""
    summary = common.read_json(seg_dir / INPUT_SEG_SUMMARY)
    seg = read_seg(seg_dir / summary["file"]) if summary["file"] else None
    statistics = common.read_json(statistics_dir / INPUT_STATISTICS)
    report = build_report(seg, statistics, config, job)
    common.write_outputs(
        output_dir,
        {
            OUTPUT_JSON: common.json_bytes(report),
            OUTPUT_MARKDOWN: render_markdown(report).encode("utf-8"),
        },
    )
    return report


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Combine the ``seg-writer`` and ``statistics`` outputs into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    job = {"id": str(driver.job_id), "name": driver.job_name}
    try:
        config = ReportConfig.from_env(os.environ)
        seg_dir = common.input_folder(payload.input_entries, from_stage="seg-writer")
        statistics_dir = common.input_folder(payload.input_entries, from_stage="statistics")
        output_dir = common.output_folder(payload.output_entries)
        report = run(seg_dir, statistics_dir, output_dir, config, job)
    except (ValueError, LookupError, KeyError, OSError, RuntimeError) as error:
        logger.error("report failed: %s", error)
        return False
    findings = report["findings"]
    print(
        f"report: {findings['count']} component(s), {findings['total_volume_mm3']:g} mm³ "
        f"-> {OUTPUT_MARKDOWN}, {OUTPUT_JSON}",
        flush=True,
    )
    return True


def main() -> int:
    """Run the operator under the Clara pipeline driver."""
    logging.basicConfig(level=logging.INFO)
    driver: clara.Driver[None] = clara.Driver(execute=execute)
    driver.start()
    result = driver.wait_for_completion()
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
