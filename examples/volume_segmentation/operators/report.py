"""Operator ``report``: combine the segmentation and the statistics into a report (fan-in).

Inputs: ``segment``'s output (``components.json``) and ``statistics``' output
(``statistics.json``), found by the entries' ``from_stage``. Output: ``report.md`` (a table of
the components with volumes in mm³ from ``ElementSpacing``) and ``report.json``.

Variables: ``REPORT_TITLE`` (default "Volume segmentation report"),
``LESION_MAX_VOLUME_MM3`` (components up to this volume are lesion candidates, larger ones are
organs; default 1000).
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

import clara

logger = logging.getLogger(__name__)

INPUT_COMPONENTS = "components.json"
INPUT_STATISTICS = "statistics.json"
OUTPUT_MARKDOWN = "report.md"
OUTPUT_JSON = "report.json"
ORGAN = "organ"
LESION = "lesion candidate"


@dataclass(frozen=True)
class ReportConfig:
    """The operator's variables."""

    title: str = "Volume segmentation report"
    lesion_max_volume_mm3: float = 1000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReportConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator)."""
        lesion_max = common.env_float(env, "LESION_MAX_VOLUME_MM3", 1000.0, minimum=0.0)
        assert lesion_max is not None
        return cls(
            title=env.get("REPORT_TITLE", "").strip() or cls.title,
            lesion_max_volume_mm3=lesion_max,
        )


def build_report(
    components: Mapping[str, Any],
    statistics: Mapping[str, Any],
    config: ReportConfig,
    job: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` document from ``components.json`` and ``statistics.json``."""
    spacing = [float(s) for s in components["spacing_mm"]]
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    lo, hi = (float(v) for v in statistics["window"])
    rows = []
    for component in components["components"]:
        volume_mm3 = component["voxels"] * voxel_mm3
        low, high = component["bbox"]["min"], component["bbox"]["max"]
        row = {
            "label": component["label"],
            "class": LESION if volume_mm3 <= config.lesion_max_volume_mm3 else ORGAN,
            "voxels": component["voxels"],
            "volume_mm3": round(volume_mm3, 1),
            "volume_ml": round(volume_mm3 / 1000, 2),
            "centroid_mm": [
                round(c * s, 2) for c, s in zip(component["centroid"], spacing, strict=True)
            ],
            "extent_mm": [
                round((h - lo_ + 1) * s, 1) for lo_, h, s in zip(low, high, spacing, strict=True)
            ],
            "bbox_voxels": {"min": list(low), "max": list(high)},
        }
        if "mean_intensity" in component:
            row["mean_intensity"] = round(lo + component["mean_intensity"] * (hi - lo), 1)
        rows.append(row)
    intensity = statistics["intensity"]
    return {
        "title": config.title,
        "job": dict(job) if job else None,
        "source": statistics.get("source", ""),
        "dims": list(components["dims"]),
        "spacing_mm": spacing,
        "voxel_volume_mm3": round(voxel_mm3, 4),
        "segmentation": {
            key: components[key]
            for key in ("threshold", "connectivity", "min_component_voxels", "count", "discarded")
        },
        "findings": {
            "organs": sum(1 for r in rows if r["class"] == ORGAN),
            "lesion_candidates": sum(1 for r in rows if r["class"] == LESION),
            "lesion_max_volume_mm3": config.lesion_max_volume_mm3,
            "segmented_volume_mm3": round(sum(r["volume_mm3"] for r in rows), 1),
        },
        "components": rows,
        "intensity": {
            key: intensity[key] for key in ("count", "min", "max", "mean", "std", "percentiles")
        },
        "window": [lo, hi],
    }


def _triple(values: list[float], separator: str) -> str:
    return separator.join(f"{v:g}" for v in values)


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` for a ``build_report`` document."""
    seg, findings = report["segmentation"], report["findings"]
    lines = [f"# {report['title']}", ""]
    if report["job"]:
        lines.append(f"- Job: {report['job'].get('name', '')} (`{report['job'].get('id', '')}`)")
    lines += [
        f"- Source: `{report['source']}`, {_triple(report['dims'], ' x ')} voxels, "
        f"spacing {_triple(report['spacing_mm'], ' x ')} mm "
        f"({report['voxel_volume_mm3']:g} mm³ per voxel)",
        f"- Segmentation: threshold {seg['threshold']:g} (normalized), "
        f"{seg['connectivity']}-connectivity, {seg['count']} component(s) kept, "
        f"{seg['discarded']} smaller than {seg['min_component_voxels']} voxels discarded",
        f"- Findings: {findings['organs']} organ(s), {findings['lesion_candidates']} lesion "
        f"candidate(s) (at most {findings['lesion_max_volume_mm3']:g} mm³)",
        "",
        "## Components",
        "",
    ]
    if report["components"]:
        lines += [
            "| Label | Class | Voxels | Volume (mm³) | Volume (mL) | Centroid (mm) "
            "| Extent (mm) | Mean intensity |",
            "| ---: | --- | ---: | ---: | ---: | --- | --- | ---: |",
        ]
        for row in report["components"]:
            mean = f"{row['mean_intensity']:g}" if "mean_intensity" in row else "-"
            lines.append(
                f"| {row['label']} | {row['class']} | {row['voxels']} | {row['volume_mm3']:.1f} "
                f"| {row['volume_ml']:.2f} | ({_triple(row['centroid_mm'], ', ')}) "
                f"| {_triple(row['extent_mm'], ' x ')} | {mean} |"
            )
    else:
        lines.append("No components above the threshold.")
    intensity = report["intensity"]
    lo, hi = report["window"]
    lines += [
        "",
        f"## Intensity statistics (window {lo:g}..{hi:g})",
        "",
        "| Statistic | Value |",
        "| --- | ---: |",
        f"| Voxels | {intensity['count']} |",
        f"| Mean | {intensity['mean']:g} |",
        f"| Standard deviation | {intensity['std']:g} |",
        f"| Minimum | {intensity['min']:g} |",
        f"| Maximum | {intensity['max']:g} |",
    ]
    lines += [f"| P{p} | {v:g} |" for p, v in intensity["percentiles"].items()]
    return "\n".join(lines) + "\n"


def run(
    segment_dir: Path,
    statistics_dir: Path,
    output_dir: Path,
    config: ReportConfig,
    job: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Read both upstream results; write ``report.md`` and ``report.json``."""
    components = common.read_json(segment_dir / INPUT_COMPONENTS)
    statistics = common.read_json(statistics_dir / INPUT_STATISTICS)
    report = build_report(components, statistics, config, job)
    common.write_json(output_dir / OUTPUT_JSON, report)
    (output_dir / OUTPUT_MARKDOWN).write_text(render_markdown(report), encoding="utf-8")
    return report


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Combine the ``segment`` and ``statistics`` outputs into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    job = {"id": str(driver.job_id), "name": driver.job_name}
    try:
        config = ReportConfig.from_env(os.environ)
        segment_dir = common.input_folder(payload.input_entries, from_stage="segment")
        statistics_dir = common.input_folder(payload.input_entries, from_stage="statistics")
        output_dir = common.output_folder(payload.output_entries)
        report = run(segment_dir, statistics_dir, output_dir, config, job)
    except (ValueError, LookupError, KeyError, OSError) as error:
        logger.error("report failed: %s", error)
        return False
    findings = report["findings"]
    print(
        f"report: {findings['organs']} organ(s), {findings['lesion_candidates']} lesion "
        f"candidate(s), {findings['segmented_volume_mm3']:g} mm³ segmented -> "
        f"{OUTPUT_MARKDOWN}, {OUTPUT_JSON}",
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
