"""Operator ``load-volume``: read the job's MetaImage volume, validate it and normalize it.

Input: the job's input payload, a folder holding one ``.mhd`` + ``.raw`` volume (or the one
named by ``INPUT_FILE``). Output: ``volume.mhd`` + ``volume.raw`` (``MET_USHORT``, intensities
windowed to ``WINDOW_MIN..WINDOW_MAX`` and scaled to 0..1 stored as 0..65535) and
``metadata.json``.

Variables: ``INPUT_FILE`` (default: the only ``.mhd`` in the input), ``WINDOW_MIN`` and
``WINDOW_MAX`` (default: the volume's own minimum and maximum).
"""

from __future__ import annotations

import array
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

OUTPUT_VOLUME = "volume.mhd"
OUTPUT_METADATA = "metadata.json"


@dataclass(frozen=True)
class LoadConfig:
    """The operator's variables."""

    input_file: str = ""
    window_min: float | None = None
    window_max: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoadConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator)."""
        input_file = env.get("INPUT_FILE", "").strip()
        if input_file and (Path(input_file).name != input_file or not input_file.endswith(".mhd")):
            raise ValueError(f"INPUT_FILE must be a .mhd file name, got {input_file!r}")
        config = cls(
            input_file=input_file,
            window_min=common.env_float(env, "WINDOW_MIN", None),
            window_max=common.env_float(env, "WINDOW_MAX", None),
        )
        lo, hi = config.window_min, config.window_max
        if lo is not None and hi is not None and hi <= lo:
            raise ValueError(f"WINDOW_MAX ({hi:g}) must be greater than WINDOW_MIN ({lo:g})")
        return config


def find_volume(folder: Path, input_file: str = "") -> Path:
    """The ``.mhd`` file to read from ``folder``."""
    if input_file:
        path = folder / input_file
        if not path.is_file():
            raise FileNotFoundError(f"{input_file} not found in the input payload")
        return path
    candidates = sorted(folder.glob("*.mhd"))
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates) or "none"
        raise FileNotFoundError(f"expected exactly one .mhd in the input payload, found {names}")
    return candidates[0]


def normalize(
    volume: common.Volume, window_min: float | None = None, window_max: float | None = None
) -> tuple[common.Volume, tuple[float, float]]:
    """Clamp intensities to the window and scale them to 0..65535 (``MET_USHORT``).

    A missing window bound defaults to the volume's minimum or maximum. Returns the new
    volume and the window used.
    """
    lo = float(min(volume.data)) if window_min is None else window_min
    hi = float(max(volume.data)) if window_max is None else window_max
    top = common.NORMALIZED_MAX
    if hi <= lo:  # a constant volume: everything maps to 0
        scaled = array.array("H", [0]) * volume.voxel_count
    else:
        scale = top / (hi - lo)
        scaled = array.array("H", (min(top, max(0, round((v - lo) * scale))) for v in volume.data))
    return common.Volume(volume.dims, volume.spacing, "MET_USHORT", scaled), (lo, hi)


def run(input_dir: Path, output_dir: Path, config: LoadConfig) -> dict[str, Any]:
    """Read, validate and normalize the input volume; write it and ``metadata.json``."""
    source = find_volume(input_dir, config.input_file)
    volume = common.read_mhd(source)
    normalized, window = normalize(volume, config.window_min, config.window_max)
    common.write_mhd(output_dir / OUTPUT_VOLUME, normalized)
    metadata = {
        "source": source.name,
        "dims": list(volume.dims),
        "spacing_mm": list(volume.spacing),
        "source_element_type": volume.element_type,
        "source_range": [min(volume.data), max(volume.data)],
        "window": list(window),
        "normalized": True,
        "stored_max": common.NORMALIZED_MAX,
        "volume": OUTPUT_VOLUME,
    }
    common.write_json(output_dir / OUTPUT_METADATA, metadata)
    return metadata


def prepare(driver: clara.Driver[None]) -> bool:
    """Validate the variables before the input is ready, so a bad setting fails fast."""
    try:
        config = LoadConfig.from_env(os.environ)
    except ValueError as error:
        logger.error("invalid variable: %s", error)
        return False
    logger.info("stage %s (timeout %s): %s", driver.stage_name, driver.stage_timeout, config)
    return True


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Load the job's volume into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        config = LoadConfig.from_env(os.environ)
        input_dir = common.input_folder(payload.input_entries)
        output_dir = common.output_folder(payload.output_entries)
        metadata = run(input_dir, output_dir, config)
    except (ValueError, LookupError, OSError) as error:
        logger.error("load-volume failed: %s", error)
        return False
    dims = "x".join(map(str, metadata["dims"]))
    lo, hi = metadata["window"]
    print(
        f"load-volume: {metadata['source']} {dims} {metadata['source_element_type']}, "
        f"window {lo:g}..{hi:g} -> {OUTPUT_VOLUME}",
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
