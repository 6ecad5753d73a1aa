"""Snapshots of an architecture with syrupy (``pip install cnncheck[snapshot]``).

``assert cnncheck.architecture(model, x) == cnncheck_snapshot`` stores the stable layer table in a
``.txt`` file of its own under ``__snapshots__``; when the architecture changes, the failure names the
changed layers (``conv1: kernel_size 3 -> 5, params 72 -> 200``) before the line diff. Update a
snapshot after a reviewed change with ``pytest --snapshot-update``. A plain ``snapshot`` fixture works
too: syrupy's ``.ambr`` file then holds every field of the architecture, with syrupy's own diff.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from cnncheck.layer_table import describe_changes


class ArchitectureSnapshot(SingleFileSnapshotExtension):
    """A syrupy extension: one text file per snapshot, holding ``str(architecture)``."""

    file_extension = "txt"
    _write_mode = WriteMode.TEXT

    def serialize(self, data: Any, **kwargs: Any) -> str:
        return str(data).rstrip("\n") + "\n"

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Iterator[str]:
        changes = describe_changes(str(snapshot_data), str(serialized_data))
        if changes:
            yield "the architecture changed:"
            yield from (f"  {line}" for line in changes)
            yield ""
        yield from super().diff_lines(serialized_data, snapshot_data)
