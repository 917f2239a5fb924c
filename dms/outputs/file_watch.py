"""Notices a database file changed under the running process: deleted, replaced by another
file, or truncated (it or its ``-wal``). SQLite itself never shrinks either file while it has
it open, so a smaller size than seen before is damage, not housekeeping."""

from __future__ import annotations

import os
from pathlib import Path


class FileWatch:
    """The identity (device, inode) and the largest sizes seen of ``path`` and ``wal``."""

    def __init__(self, path: Path, wal: Path) -> None:
        self.path = path
        self.wal = wal
        self._file_id: tuple[int, int] | None = None
        self._wal_id: tuple[int, int] | None = None
        self._size = 0
        self._wal_size = 0

    def note(self) -> None:
        """Remember the files as they are now (a file just opened or made)."""
        try:
            st = os.stat(self.path)
            self._file_id, self._size = (st.st_dev, st.st_ino), st.st_size
        except OSError:
            self._file_id, self._size = None, 0  # taken at the next look
        try:
            wal = os.stat(self.wal)
            self._wal_id, self._wal_size = (wal.st_dev, wal.st_ino), wal.st_size
        except OSError:
            self._wal_id, self._wal_size = None, 0

    def problem(self) -> str | None:
        """What is wrong with the files now (a sentence), or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"{self.path.name} was deleted while in use"
        except OSError:
            return None  # cannot tell; SQLite reports real trouble
        if self._file_id is None:
            self._file_id = (st.st_dev, st.st_ino)
        if (st.st_dev, st.st_ino) != self._file_id:
            return f"{self.path.name} was replaced by another file while in use"
        if st.st_size < self._size:
            return (f"{self.path.name} was truncated while in use ({st.st_size} bytes, was "
                    f"{self._size})")
        self._size = st.st_size
        return self._wal_problem()

    def _wal_problem(self) -> str | None:
        try:
            wal = os.stat(self.wal)
        except FileNotFoundError:
            return f"{self.wal.name} was deleted while in use" if self._wal_id else None
        except OSError:
            return None
        if self._wal_id is not None and (wal.st_dev, wal.st_ino) != self._wal_id:
            return f"{self.wal.name} was replaced while in use"
        if wal.st_size < self._wal_size:
            return (f"{self.wal.name} was truncated while in use ({wal.st_size} bytes, was "
                    f"{self._wal_size})")
        self._wal_id, self._wal_size = (wal.st_dev, wal.st_ino), wal.st_size
        return None
