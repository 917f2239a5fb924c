"""Private files and folders: the one place that makes them and decides whether to trust one.

dms keeps personal and safety data on disk (calibration profiles, the MQTT outbox, spilled
alerts). :func:`private_dir` makes a folder only its owner's group can read (0750) whatever the
umask; :func:`distrust` says why a folder someone else may have made must not be trusted;
:func:`create_exclusive` and :func:`read_private` open files without following a symbolic link
planted in their place, and refuse a file another user owns or can write.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o750  # owner all, group read and enter, others nothing
FILE_MODE = 0o640  # owner read/write, group read, others nothing
DIR_CLEAR_BITS = 0o027  # removed from our folders' modes: group write, all of others
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def private_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) 0750; one we own loses group write and every
    bit for others. Raises OSError when it cannot be made."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid == os.geteuid() and st.st_mode & DIR_CLEAR_BITS:
        os.chmod(directory, stat.S_IMODE(st.st_mode) & ~DIR_CLEAR_BITS)


def distrust(directory: Path) -> str | None:
    """Why ``directory`` must not be trusted with our files: not a real folder (a symbolic
    link), owned by another user, or writable by others (group or world: anyone there may
    have planted files or links). None when it is ours alone or does not exist yet."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder (a symbolic link or a file)"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})"
    if st.st_mode & OTHERS_WRITE:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def create_exclusive(path: Path, mode: int = FILE_MODE) -> int:
    """A new file at ``path`` opened for writing (a descriptor), created by this call: an
    existing file or a symbolic link in its place is removed first, never followed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a leftover, or a link planted there: the link itself goes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
    except OSError:
        os.close(fd)
        raise
    return fd


class UntrustedFile(OSError):
    """A file that is not a regular file of ours that only we can write."""


def read_private(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, opened without following a symbolic link. Raises
    FileNotFoundError, UntrustedFile (not a regular file, another user's, writable by
    others, larger than ``max_bytes``) or OSError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symbolic link
            raise UntrustedFile(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UntrustedFile(f"{path} is owned by uid {st.st_uid}, not by this process")
        if st.st_mode & OTHERS_WRITE:
            raise UntrustedFile(f"{path} is writable by others "
                                f"(mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > max_bytes:
            raise UntrustedFile(f"{path} has {st.st_size} bytes, more than {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)
