"""The spill journal: where records wait while the database is unreachable.

An append-only JSON-lines file (mode 0600) plus a small ``.pos`` file holding
the byte offset up to which records have been committed to the database.
Replay reads from that offset in order; the offset is moved only after the
database committed the chunk, and inserts are idempotent (keyed by
``Decision.id``), so a crash in the middle of a replay replays a chunk twice
and stores it once: exactly once, in order.

Only the writer thread touches a journal; it is not thread-safe by design.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

#: bytes read per replay step at most; a chunk ends on a record boundary
_READ_BLOCK = 4 * 1024 * 1024


class SpillJournal:
    """Append-only record journal with a committed-offset marker."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.pos_path = self.path.with_name(self.path.name + ".pos")
        self._records = 0
        self._open()

    def _open(self) -> None:
        if not self.path.exists():
            self.pos_path.unlink(missing_ok=True)  # a stale offset for a journal already cleared
            self._records = 0
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            # a record torn by a crash during append was never acknowledged: cut it
            # so the next append starts on a line of its own
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        offset = self.offset
        if offset > len(data):
            offset = 0  # cannot happen unless edited by hand; replay is idempotent anyway
            self._write_offset(0)
        self._records = data.count(b"\n", offset)

    @property
    def offset(self) -> int:
        """Byte offset of the first record not yet committed to the database."""
        try:
            return int(self.pos_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @property
    def pending(self) -> int:
        """Records waiting to be replayed."""
        return self._records

    @property
    def size_bytes(self) -> int:
        """Bytes of the journal file still to replay (0 when empty or absent)."""
        try:
            return max(0, self.path.stat().st_size - self.offset) if self._records else 0
        except FileNotFoundError:
            return 0

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records and fsync: once this returns they survive a crash."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = b"".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for r in records
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(payload)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # a disk that filled up mid-append leaves no torn record behind
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._records += len(records)

    def read(self, max_records: int) -> tuple[list[dict[str, Any]], int, int]:
        """Up to ``max_records`` records from the committed offset.

        Returns (records, offset after them, lines consumed); the line count can
        exceed the records when a corrupted line was skipped.
        """
        start = self.offset
        records: list[dict[str, Any]] = []
        lines = 0
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                pos = start
                while lines < max_records:
                    line = f.readline(_READ_BLOCK)
                    if not line.endswith(b"\n"):
                        break  # end of file (a torn tail was cut when the journal was opened)
                    pos += len(line)
                    lines += 1
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a corrupted line cannot be replayed; skip, do not wedge
        except FileNotFoundError:
            return [], start, 0
        return records, pos, lines

    def commit(self, offset: int, count: int) -> None:
        """Mark everything before ``offset`` as stored in the database."""
        self._write_offset(offset)
        self._records = max(0, self._records - count)
        if self._records == 0:
            self.clear()

    def clear(self) -> None:
        """Remove the journal (all replayed). The journal goes first: see ``_open``."""
        self.path.unlink(missing_ok=True)
        self.pos_path.unlink(missing_ok=True)
        self._records = 0

    def _write_offset(self, offset: int) -> None:
        tmp = self.pos_path.with_name(self.pos_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(offset).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.pos_path)
