"""The payload handed to an operator's ``execute`` callback."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Payload", "PayloadEntry"]


@dataclass(frozen=True, slots=True)
class PayloadEntry:
    """One input or output of a stage: a named folder on the operator's file system.

    Attributes:
        name: The entry's name; ``""`` for the set's single unnamed entry.
        path: The folder to read from (inputs) or write to (outputs).
        from_stage: For inputs, the upstream stage that produced the entry; ``""`` for the
            job's input payload and for every output entry.
        from_output: For inputs, the upstream stage's output name (``""`` for its unnamed
            output).
        declared_path: The path the pipeline definition declares for the entry (``/input``,
            ``/input/segmentation``): where a Clara cluster mounts it for the operator.
            ``""`` when the platform does not say (standalone, or an older platform). A
            platform that does not remap folders (the mock, until its sandbox does) gives
            another folder in ``path``; read and write ``path``.
    """

    name: str
    path: str
    from_stage: str = ""
    from_output: str = ""
    declared_path: str = ""


@dataclass(frozen=True, slots=True)
class Payload:
    """The stage's inputs and outputs, valid only during the ``execute`` callback.

    Attributes:
        input_entries: The stage's inputs, in definition order.
        output_entries: The stage's outputs, in definition order.
    """

    input_entries: tuple[PayloadEntry, ...]
    output_entries: tuple[PayloadEntry, ...]

    def input(self, name: str = "") -> PayloadEntry:
        """Return the input entry called ``name`` (the unnamed one by default).

        Raises:
            KeyError: No input entry has that name.
        """
        return _find(self.input_entries, name, "input")

    def output(self, name: str = "") -> PayloadEntry:
        """Return the output entry called ``name`` (the unnamed one by default).

        Raises:
            KeyError: No output entry has that name.
        """
        return _find(self.output_entries, name, "output")


def _find(entries: tuple[PayloadEntry, ...], name: str, kind: str) -> PayloadEntry:
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(repr(e.name) for e in entries) or "none"
    raise KeyError(f"no {kind} entry named {name!r} (entries: {known})")
