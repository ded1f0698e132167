"""Helpers shared by the volume-segmentation operators (standard library only).

* MetaImage (``.mhd`` header + ``.raw`` data) reading and writing for 3-D ``MET_USHORT`` and
  ``MET_UCHAR`` volumes, with header validation.
* JSON helpers and typed parsing of the operator variables the platform passes as environment
  variables.
* Payload-entry lookup: operators never hard-code ``/input`` or ``/output``; they ask the
  payload for the folder of an entry.
"""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: MetaImage element types this example supports, mapped to ``array`` type codes.
ELEMENT_TYPES: dict[str, str] = {"MET_USHORT": "H", "MET_UCHAR": "B"}

#: Largest stored value of a normalized (0..1) intensity volume.
NORMALIZED_MAX = 65535

_REQUIRED_KEYS = ("ObjectType", "NDims", "DimSize", "ElementType", "ElementDataFile")


class MetaImageError(ValueError):
    """A MetaImage header or data file is malformed or not supported."""


@dataclass
class Volume:
    """A 3-D volume; voxel ``(x, y, z)`` is at ``x + nx * (y + ny * z)`` (x varies fastest)."""

    dims: tuple[int, int, int]
    spacing: tuple[float, float, float]
    element_type: str
    data: array.array[int]

    def __post_init__(self) -> None:
        if self.element_type not in ELEMENT_TYPES:
            raise MetaImageError(f"unsupported ElementType {self.element_type!r}")
        if self.data.typecode != ELEMENT_TYPES[self.element_type]:
            raise MetaImageError(
                f"data typecode {self.data.typecode!r} does not match {self.element_type}"
            )
        if len(self.dims) != 3 or any(d <= 0 for d in self.dims):
            raise MetaImageError(f"dims must be 3 positive sizes, got {self.dims}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise MetaImageError(f"spacing must be 3 positive values, got {self.spacing}")
        if len(self.data) != self.voxel_count:
            raise MetaImageError(
                f"{len(self.data)} values for {self.dims[0]}x{self.dims[1]}x{self.dims[2]} voxels"
            )

    @property
    def voxel_count(self) -> int:
        """Number of voxels."""
        return self.dims[0] * self.dims[1] * self.dims[2]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³ (``ElementSpacing`` is in mm)."""
        return self.spacing[0] * self.spacing[1] * self.spacing[2]

    def index(self, x: int, y: int, z: int) -> int:
        """Linear index of voxel ``(x, y, z)``."""
        nx, ny, _ = self.dims
        return x + nx * (y + ny * z)


def empty_volume(
    dims: tuple[int, int, int], spacing: tuple[float, float, float], element_type: str
) -> Volume:
    """A zero-filled volume."""
    count = dims[0] * dims[1] * dims[2]
    return Volume(
        dims, spacing, element_type, array.array(ELEMENT_TYPES[element_type], [0]) * count
    )


# ----------------------------------------------------------------------------- MetaImage


def parse_header(text: str) -> dict[str, str]:
    """Parse ``Key = Value`` lines; blank lines are skipped, a duplicate key is an error."""
    fields: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MetaImageError(f"line {number}: expected 'Key = Value', got {line!r}")
        if key in fields:
            raise MetaImageError(f"line {number}: duplicate key {key!r}")
        fields[key] = value.strip()
    return fields


def _ints(fields: Mapping[str, str], key: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in fields[key].split())
    except ValueError:
        raise MetaImageError(f"{key} must be integers, got {fields[key]!r}") from None


def _floats(fields: Mapping[str, str], key: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in fields[key].split())
    except ValueError:
        raise MetaImageError(f"{key} must be numbers, got {fields[key]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise MetaImageError(f"{key} must be finite, got {fields[key]!r}")
    return values


def _bool(fields: Mapping[str, str], key: str, default: bool) -> bool:
    value = fields.get(key)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise MetaImageError(f"{key} must be True or False, got {value!r}")


@dataclass(frozen=True)
class MetaImageHeader:
    """The validated parts of a MetaImage header this example uses."""

    dims: tuple[int, int, int]
    spacing: tuple[float, float, float]
    element_type: str
    data_file: str


def validate_header(fields: Mapping[str, str]) -> MetaImageHeader:
    """Check a parsed header describes an uncompressed little-endian 3-D volume we support."""
    missing = [key for key in _REQUIRED_KEYS if key not in fields]
    if missing:
        raise MetaImageError(f"missing header key(s): {', '.join(missing)}")
    if fields["ObjectType"] != "Image":
        raise MetaImageError(f"ObjectType must be Image, got {fields['ObjectType']!r}")
    if _ints(fields, "NDims") != (3,):
        raise MetaImageError(f"NDims must be 3, got {fields['NDims']!r}")
    dims = _ints(fields, "DimSize")
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise MetaImageError(f"DimSize must be 3 positive sizes, got {fields['DimSize']!r}")
    spacing = _floats(fields, "ElementSpacing") if "ElementSpacing" in fields else (1.0, 1.0, 1.0)
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise MetaImageError(
            f"ElementSpacing must be 3 positive values, got {fields['ElementSpacing']!r}"
        )
    element_type = fields["ElementType"]
    if element_type not in ELEMENT_TYPES:
        supported = ", ".join(ELEMENT_TYPES)
        raise MetaImageError(f"ElementType {element_type!r} is not supported ({supported})")
    if not _bool(fields, "BinaryData", default=True):
        raise MetaImageError("BinaryData = False (ASCII data) is not supported")
    if _bool(fields, "CompressedData", default=False):
        raise MetaImageError("CompressedData = True is not supported")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False"))
    if _bool({"ByteOrderMSB": msb}, "ByteOrderMSB", default=False):
        raise MetaImageError("big-endian data (BinaryDataByteOrderMSB = True) is not supported")
    if "HeaderSize" in fields and _ints(fields, "HeaderSize") != (0,):
        raise MetaImageError("HeaderSize other than 0 is not supported")
    data_file = fields["ElementDataFile"]
    if data_file.upper() in ("LOCAL", "LIST") or "%" in data_file:
        raise MetaImageError(f"ElementDataFile = {data_file} is not supported; use one .raw file")
    if Path(data_file).is_absolute() or ".." in Path(data_file).parts:
        raise MetaImageError(f"ElementDataFile must be a file next to the header: {data_file!r}")
    return MetaImageHeader(
        (dims[0], dims[1], dims[2]), (spacing[0], spacing[1], spacing[2]), element_type, data_file
    )


def read_mhd(path: Path | str) -> Volume:
    """Read a ``.mhd`` header and its ``.raw`` data file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise MetaImageError(f"{path.name}: header is not ASCII text") from None
    header = validate_header(parse_header(text))
    raw_path = path.parent / header.data_file
    if not raw_path.is_file():
        raise MetaImageError(f"{path.name}: data file {header.data_file!r} not found")
    data = array.array(ELEMENT_TYPES[header.element_type])
    count = header.dims[0] * header.dims[1] * header.dims[2]
    expected = count * data.itemsize
    raw = raw_path.read_bytes()
    if len(raw) != expected:
        raise MetaImageError(
            f"{raw_path.name}: {len(raw)} bytes, expected {expected} for "
            f"{'x'.join(map(str, header.dims))} {header.element_type}"
        )
    data.frombytes(raw)
    if sys.byteorder == "big":
        data.byteswap()
    return Volume(header.dims, header.spacing, header.element_type, data)


def _number(value: float) -> str:
    return format(value, "g") if value != int(value) else str(int(value))


def format_header(volume: Volume, data_file: str) -> str:
    """The ``.mhd`` text for ``volume`` with its data in ``data_file``."""
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "ElementSpacing = " + " ".join(_number(s) for s in volume.spacing),
        "DimSize = " + " ".join(str(d) for d in volume.dims),
        f"ElementType = {volume.element_type}",
        f"ElementDataFile = {data_file}",  # must be the last field
    ]
    return "\n".join(lines) + "\n"


def write_mhd(path: Path | str, volume: Volume) -> Path:
    """Write ``volume`` to ``path`` (``.mhd``) and a ``.raw`` file of the same stem."""
    path = Path(path)
    if path.suffix != ".mhd":
        raise ValueError(f"expected a .mhd path, got {path}")
    raw_path = path.with_suffix(".raw")
    data = volume.data
    if sys.byteorder == "big":
        data = array.array(data.typecode, data)
        data.byteswap()
    raw_path.write_bytes(data.tobytes())
    path.write_text(format_header(volume, raw_path.name), encoding="ascii")
    return path


# ----------------------------------------------------------------------------- JSON


def write_json(path: Path | str, document: Any) -> Path:
    """Write ``document`` as indented JSON (keys in insertion order) with a trailing newline."""
    path = Path(path)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: Path | str) -> Any:
    """Read a JSON document."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- variables


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """Variable ``name`` as a float; unset or empty gives ``default``."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {text!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {text!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {text!r}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    """Variable ``name`` as an int >= ``minimum``; unset or empty gives ``default``."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {text!r}")
    return value


# ----------------------------------------------------------------------------- payload entries


class Entry(Protocol):
    """The attributes of a ``clara.PayloadEntry`` the operators use."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...


class InputEntry(Entry, Protocol):
    """An input ``clara.PayloadEntry``."""

    @property
    def from_stage(self) -> str: ...


def _describe(entry: Entry) -> str:
    source = getattr(entry, "from_stage", None)
    name = entry.name or "<unnamed>"
    return name if source is None else f"{source or '<job>'}:{name}"


def _only(matches: list[Entry], wanted: str, entries: tuple[Entry, ...]) -> Path:
    if len(matches) == 1:
        return Path(matches[0].path)
    have = ", ".join(_describe(e) for e in entries) or "none"
    problem = "no" if not matches else "more than one"
    raise LookupError(f"{problem} {wanted} (entries: {have})")


def input_folder(
    entries: Iterable[InputEntry], from_stage: str | None = None, name: str | None = None
) -> Path:
    """Folder of the one input entry from ``from_stage`` ("" = the job's input payload).

    ``None`` accepts any source or name: a single-input operator then keeps working when the
    pipeline renames its upstream stage or output, and in standalone mode. A fan-in operator
    tells its inputs apart by ``from_stage`` (and ``name``, for a stage with several outputs).
    """
    entries = tuple(entries)
    matches: list[Entry] = [
        e for e in entries if from_stage in (None, e.from_stage) and name in (None, e.name)
    ]
    wanted = "input entry"
    if from_stage is not None:
        wanted += f" from {from_stage or 'the job payload'}"
    if name is not None:
        wanted += f" named {name or '<unnamed>'}"
    return _only(matches, wanted, entries)


def output_folder(entries: Iterable[Entry], name: str | None = None) -> Path:
    """Folder of the output entry called ``name``; ``None`` (the default): the only one."""
    entries = tuple(entries)
    matches = [e for e in entries if name in (None, e.name)]
    wanted = "output entry" if name is None else f"output entry named {name or '<unnamed>'}"
    return _only(matches, wanted, entries)
