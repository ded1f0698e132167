"""docs/architecture.md names every room: each hand-written module of both packages."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = {"__init__.py", "__main__.py", "py.typed"}


def _rooms() -> list[str]:
    rooms = []
    for package in ("clara", "server_mock"):
        for path in sorted((ROOT / package).iterdir()):
            if path.name in SKIPPED or path.name in ("_proto", "__pycache__"):
                continue
            if path.is_dir():
                rooms.append(f"{package}/{path.name}/")
            elif path.suffix == ".py":
                rooms.append(f"{package}/{path.name}")
    return rooms


def test_the_architecture_doc_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        room
        for room in _rooms()
        if room not in text and f"`{Path(room).name}`" not in text and Path(room).name not in text
    ]
    assert missing == []
