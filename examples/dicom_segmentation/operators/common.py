"""Helpers shared by the DICOM segmentation operators.

* Payload-entry lookup: operators never hard-code ``/input`` or ``/output``; they ask the
  payload for the folder of an entry (by the stage it comes from, and its name).
* Typed parsing of the operator variables the platform passes as environment variables.
* JSON and ``.npy`` outputs written all at once: a stage either writes every output file or
  none, so a failed stage never leaves a half-written result for a dependant to read.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

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

    ``None`` accepts any source or name, so a single-input operator keeps working when the
    pipeline renames its upstream stage, and in standalone mode. A fan-in operator tells its
    inputs apart by ``from_stage`` (and ``name``, for a stage with several outputs).

    Raises:
        LookupError: No entry, or more than one, matches; the message lists the entries.
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
    """Folder of the output entry called ``name``; ``None`` (the default): the only one.

    Raises:
        LookupError: No entry, or more than one, matches; the message lists the entries.
    """
    entries = tuple(entries)
    matches = [e for e in entries if name in (None, e.name)]
    wanted = "output entry" if name is None else f"output entry named {name or '<unnamed>'}"
    return _only(matches, wanted, entries)


# ----------------------------------------------------------------------------- variables


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """Variable ``name`` as a finite float; unset or empty gives ``default``.

    Raises:
        ValueError: The value is not a number or is out of range; the message names both.
    """
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
        raise ValueError(f"{name} must be >= {minimum:g}, got {text!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {text!r}")
    return value


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """Variable ``name`` as an int within ``minimum..maximum``; unset or empty gives ``default``.

    Raises:
        ValueError: The value is not an integer or is out of range; the message names both.
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {text!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {text!r}")
    return value


def env_text(env: Mapping[str, str], name: str, default: str) -> str:
    """Variable ``name`` stripped; unset or empty gives ``default``."""
    return env.get(name, "").strip() or default


# ----------------------------------------------------------------------------- files


def read_json(path: Path | str) -> Any:
    """Read a JSON document."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def json_bytes(document: Any) -> bytes:
    """``document`` as indented UTF-8 JSON (keys in insertion order) with a trailing newline."""
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def npy_bytes(array: npt.NDArray[Any]) -> bytes:
    """``array`` in NumPy's ``.npy`` format (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_npy(path: Path | str) -> npt.NDArray[Any]:
    """Read a ``.npy`` array written by :func:`npy_bytes` (pickled objects are refused)."""
    array: npt.NDArray[Any] = np.load(Path(path), allow_pickle=False)
    return array


def write_outputs(folder: Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write every file of ``files`` (name to content) into ``folder``, or none of them.

    Each file is written under a temporary name first and renamed once all are written, so
    a failure (a full disk, a permission) leaves no partial result behind. ``folder`` is
    created if missing (the platform creates it; a standalone run may not).

    Returns:
        The paths written, in the order of ``files``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    renamed: list[Path] = []
    try:
        for name, content in files.items():
            if Path(name).name != name:
                raise ValueError(f"output file names must be plain names, got {name!r}")
            temporary = folder / f".{name}.partial"
            staged.append((temporary, folder / name))
            temporary.write_bytes(content)
        for temporary, final in staged:
            os.replace(temporary, final)
            renamed.append(final)
    except BaseException:
        for path in [temporary for temporary, _ in staged] + renamed:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return [final for _, final in staged]
