"""Operator ``seg-writer``: write the segmentation as a DICOM SEG object with highdicom.

Inputs: the job's input payload (the source CT series, as ``dicom-reader`` read it) and
``segment``'s output (``labels.npy``, ``components.json``, ``geometry.json``). Output:
``seg.dcm``, a binary Segmentation Storage object (one segment per component, one frame
per slice and segment that holds any of it) in a new series of the source study, that
references the source series and instances; and ``seg.json``, a summary of it.

The source series is read again and checked to be the one the labels were computed from
(same series, same slices in the same order), since a SEG must reference the images its
frames were derived from. When ``segment`` found no component there is nothing to encode
(a SEG needs at least one segment): ``seg.json`` then says so, and no ``seg.dcm`` is
written.

Variables: ``SERIES_NUMBER`` (default 900), ``SERIES_DESCRIPTION``, ``SEGMENT_LABEL`` (the
segments are labelled ``<SEGMENT_LABEL> <n>``; default ``dense region``).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import dicom_series
import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import clara

logger = logging.getLogger(__name__)

INPUT_LABELS = "labels.npy"
INPUT_COMPONENTS = "components.json"
INPUT_GEOMETRY = "geometry.json"
OUTPUT_SEG = "seg.dcm"
OUTPUT_SUMMARY = "seg.json"

MANUFACTURER = "clara-stage-driver examples"
MODEL_NAME = "dicom-segmentation"
SOFTWARE_VERSION = "0.1"
ALGORITHM_NAME = "threshold-connected-components"
MAX_LO = 64  # characters in a DICOM LO (long string) value


@dataclass(frozen=True)
class SegWriterConfig:
    """The operator's variables."""

    series_number: int = 900
    series_description: str = "Segmentation: threshold and connected components"
    segment_label: str = "dense region"

    def __post_init__(self) -> None:
        for name, value in (
            ("SERIES_DESCRIPTION", self.series_description),
            ("SEGMENT_LABEL", self.segment_label),
        ):
            if len(value) > MAX_LO - 4 or "\\" in value:
                raise ValueError(
                    f"{name} must be at most {MAX_LO - 4} characters without '\\', got {value!r}"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SegWriterConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator).

        Raises:
            ValueError: A variable is malformed; the message names it and its value.
        """
        return cls(
            series_number=common.env_int(
                env, "SERIES_NUMBER", cls.series_number, minimum=1, maximum=2**31 - 1
            ),
            series_description=common.env_text(env, "SERIES_DESCRIPTION", cls.series_description),
            segment_label=common.env_text(env, "SEGMENT_LABEL", cls.segment_label),
        )


def check_source(series: dicom_series.CtSeries, geometry: Mapping[str, Any]) -> None:
    """Check ``series`` is the series, in the slice order, that ``geometry`` describes.

    Raises:
        ValueError: Another series, other slices, or another order.
    """
    uid = str(series.first.SeriesInstanceUID)
    if uid != geometry["series_instance_uid"]:
        raise ValueError(
            f"the labels were computed from series {geometry['series_instance_uid']}, "
            f"the input payload holds series {uid}"
        )
    if series.sop_instance_uids != list(geometry["sop_instance_uids"]):
        raise ValueError(
            f"the slices of series {uid} in the input payload are not those, in the same "
            "order, that the labels were computed from"
        )


def segment_descriptions(
    components: Sequence[Mapping[str, Any]],
    segmentation: Mapping[str, Any],
    config: SegWriterConfig,
) -> list[hd.seg.SegmentDescription]:
    """One :class:`highdicom.seg.SegmentDescription` per component, numbered by its label."""
    parameters = {
        key: f"{segmentation[key]:g}"
        for key in ("lower_hu", "upper_hu", "connectivity", "min_component_mm3")
    }
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        # Threshold, then label connected neighbourhoods: no learned model.
        family=codes.cid7162.NeighborhoodAnalysis,
        version=SOFTWARE_VERSION,
        parameters=parameters,
    )
    descriptions = []
    for component in components:
        number = int(component["label"])
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{config.segment_label} {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        description.SegmentDescription = (
            f"{component['voxels']} voxels in "
            f"{segmentation['lower_hu']:g}..{segmentation['upper_hu']:g} HU"
        )[:MAX_LO]
        descriptions.append(description)
    return descriptions


def build_segmentation(
    series: dicom_series.CtSeries,
    labels: npt.NDArray[np.integer[Any]],
    segmentation: Mapping[str, Any],
    config: SegWriterConfig,
) -> hd.seg.Segmentation:
    """The binary DICOM SEG of ``labels`` (a label map with ``series``'s shape).

    Raises:
        ValueError: ``labels`` does not match the series, or its values are not the
            components of ``segmentation`` (``components.json``).
    """
    if labels.shape != series.shape:
        raise ValueError(f"labels of shape {labels.shape} for a series of shape {series.shape}")
    components = segmentation["components"]
    numbers = [int(c["label"]) for c in components]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"component labels must be 1..n, got {numbers}")
    present = {int(v) for v in np.unique(labels)} - {0}
    if not present <= set(numbers):
        raise ValueError(
            f"labels.npy holds labels {sorted(present - set(numbers))} not in {INPUT_COMPONENTS}"
        )
    return hd.seg.Segmentation(
        source_images=[item.dataset for item in series.slices],
        pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(components, segmentation, config),
        series_instance_uid=generate_uid(),
        series_number=config.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="none",
        series_description=config.series_description,
        content_description="Automatic segmentation of the components of a HU threshold",
        content_label="SEGMENTATION",
    )


def summarize(
    seg: hd.seg.Segmentation | None, components: Sequence[Mapping[str, Any]], source_uid: str
) -> dict[str, Any]:
    """The ``seg.json`` document: what ``seg.dcm`` holds, or that there is none."""
    if seg is None:
        return {"file": None, "segments": [], "referenced_series_instance_uid": source_uid}
    return {
        "file": OUTPUT_SEG,
        "sop_class_uid": str(seg.SOPClassUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "series_number": int(seg.SeriesNumber),
        "study_instance_uid": str(seg.StudyInstanceUID),
        "referenced_series_instance_uid": source_uid,
        "frames": int(seg.NumberOfFrames),
        "segments": [
            {
                "number": int(item.SegmentNumber),
                "label": str(item.SegmentLabel),
                "voxels": int(component["voxels"]),
            }
            for item, component in zip(seg.SegmentSequence, components, strict=True)
        ],
    }


def dataset_bytes(seg: hd.seg.Segmentation) -> bytes:
    """``seg`` as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def run(
    dicom_dir: Path, labels_dir: Path, output_dir: Path, config: SegWriterConfig
) -> dict[str, Any]:
    """Encode ``labels_dir``'s labels against the series in ``dicom_dir``; write the SEG."""
    geometry = common.read_json(labels_dir / INPUT_GEOMETRY)
    segmentation = common.read_json(labels_dir / INPUT_COMPONENTS)
    labels = common.read_npy(labels_dir / INPUT_LABELS)
    series = dicom_series.read_series(dicom_dir)
    check_source(series, geometry)
    components = segmentation["components"]
    seg = build_segmentation(series, labels, segmentation, config) if components else None
    summary = summarize(seg, components, geometry["series_instance_uid"])
    files = {OUTPUT_SUMMARY: common.json_bytes(summary)}
    if seg is not None:
        files = {OUTPUT_SEG: dataset_bytes(seg), **files}
    common.write_outputs(output_dir, files)
    return summary


def prepare(driver: clara.Driver[None]) -> bool:
    """Validate the variables before the inputs are ready, so a bad setting fails fast."""
    try:
        config = SegWriterConfig.from_env(os.environ)
    except ValueError as error:
        logger.error("invalid variable: %s", error)
        return False
    logger.info("stage %s: %s", driver.stage_name, config)
    return True


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Write the DICOM SEG of ``segment``'s labels into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        config = SegWriterConfig.from_env(os.environ)
        dicom_dir = common.input_folder(payload.input_entries, from_stage="")
        labels_dir = common.input_folder(payload.input_entries, from_stage="segment")
        output_dir = common.output_folder(payload.output_entries)
        summary = run(dicom_dir, labels_dir, output_dir, config)
    except (ValueError, LookupError, KeyError, OSError) as error:
        logger.error("seg-writer failed: %s", error)
        return False
    if summary["file"] is None:
        print(f"seg-writer: no segment to encode -> {OUTPUT_SUMMARY} only", flush=True)
    else:
        print(
            f"seg-writer: {len(summary['segments'])} segment(s), {summary['frames']} frame(s), "
            f"SOP instance {summary['sop_instance_uid']} referencing series "
            f"{summary['referenced_series_instance_uid']} -> {OUTPUT_SEG}, {OUTPUT_SUMMARY}",
            flush=True,
        )
    return True


def main() -> int:
    """Run the operator under the Clara pipeline driver."""
    logging.basicConfig(level=logging.INFO)
    driver: clara.Driver[None] = clara.Driver(prepare=prepare, execute=execute)
    driver.start()
    result = driver.wait_for_completion()
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
