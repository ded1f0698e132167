"""Generate the example's synthetic CT-like input volume, deterministically.

Writes ``input/volume.mhd`` + ``input/volume.raw``: 48 x 48 x 32 voxels of ``MET_USHORT``
(CT numbers + 1024, so air is about 24 and soft tissue about 1064), spacing
0.8 x 0.8 x 2.5 mm. An elliptic "body" cylinder holds two bright ellipsoid "organs", a small,
brighter ellipsoid "lesion" and a few single-voxel bright specks; everything has noise from a
seeded ``random.Random`` (only ``random()`` is used, whose sequence is stable across Python
versions for an integer seed).

    python make_input.py [--output FOLDER] [--seed N]
"""

from __future__ import annotations

import argparse
import array
import random
import sys
from dataclasses import dataclass
from pathlib import Path

_OPERATORS = str(Path(__file__).resolve().parent / "operators")
if _OPERATORS not in sys.path:  # for `import common` when run as a script
    sys.path.insert(0, _OPERATORS)
import common  # noqa: E402  (the operators' helpers)

DIMS = (48, 48, 32)
SPACING = (0.8, 0.8, 2.5)
DEFAULT_SEED = 20240611
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "input"
AIR = 24
BODY = 1064
NOISE = 40  # noise is (u1 + u2 + u3 - 1.5) * NOISE, i.e. within +-60


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in voxel coordinates with a constant base intensity."""

    name: str
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    intensity: int

    def contains(self, x: int, y: int, z: int) -> bool:
        """Whether voxel ``(x, y, z)`` is inside."""
        (cx, cy, cz), (ax, ay, az) = self.center, self.semi_axes
        dx, dy, dz = (x - cx) / ax, (y - cy) / ay, (z - cz) / az
        return dx * dx + dy * dy + dz * dz <= 1.0

    def voxel_count(self) -> int:
        """Number of voxels inside (within ``DIMS``)."""
        return sum(
            self.contains(x, y, z)
            for z in range(DIMS[2])
            for y in range(DIMS[1])
            for x in range(DIMS[0])
        )


#: The body outline: an elliptic cylinder through all slices (z semi-axis > slice count).
BODY_OUTLINE = Ellipsoid("body", (23.5, 23.5, 15.5), (22.0, 20.0, 1e6), BODY)
#: Structures painted over the body, in order; intensities are CT number + 1024.
ORGANS = (
    Ellipsoid("liver", (16.0, 22.0, 16.0), (11.0, 13.0, 10.0), 1324),
    Ellipsoid("spleen", (36.0, 16.0, 15.0), (6.0, 8.0, 7.0), 1304),
)
LESION = Ellipsoid("lesion", (34.0, 34.0, 18.0), (3.0, 3.0, 2.0), 1524)
#: Single bright voxels (e.g. calcifications), to be discarded as too small to matter.
SPECKS = ((8.0, 36.0, 4.0), (30.0, 40.0, 28.0), (40.0, 28.0, 6.0))
SPECK_INTENSITY = 1600


def generate_volume(seed: int = DEFAULT_SEED) -> common.Volume:
    """The synthetic volume for ``seed``."""
    rng = random.Random(seed)
    nx, ny, nz = DIMS
    structures = (*ORGANS, LESION)
    specks = {tuple(int(c) for c in s) for s in SPECKS}
    data = array.array("H")
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                base = BODY if BODY_OUTLINE.contains(x, y, z) else AIR
                for structure in structures:
                    if structure.contains(x, y, z):
                        base = structure.intensity
                if (x, y, z) in specks:
                    base = SPECK_INTENSITY
                noise = (rng.random() + rng.random() + rng.random() - 1.5) * NOISE
                data.append(max(0, min(65535, round(base + noise))))
    return common.Volume(DIMS, SPACING, "MET_USHORT", data)


def write_input(folder: Path = DEFAULT_OUTPUT, seed: int = DEFAULT_SEED) -> Path:
    """Write ``volume.mhd`` + ``volume.raw`` into ``folder``; returns the ``.mhd`` path."""
    folder.mkdir(parents=True, exist_ok=True)
    return common.write_mhd(folder / "volume.mhd", generate_volume(seed))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="noise seed")
    args = parser.parse_args(argv)
    path = write_input(args.output, args.seed)
    raw = path.with_suffix(".raw")
    print(f"wrote {path} and {raw.name} ({raw.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
