"""Files only foreman's own account may read: the data directory, the database, artifacts.

Prompts and answers live in these files, so they are created private whatever the
process's umask (``umask 022`` would make them world-readable): directories 0700,
files 0600. Files an older foreman left readable are made private again on open.
"""

from __future__ import annotations

import os

__all__ = ["DIRECTORY_MODE", "FILE_MODE", "private_database", "private_directory", "write_private"]

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
#: The files of one SQLite database in WAL mode, by suffix.
_DATABASE_FILES = ("", "-wal", "-shm", "-journal")


def private_directory(path: str) -> None:
    """Create ``path`` if need be, and its missing parents, each 0700; ``path`` ends 0700."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        private_directory(parent)
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        pass
    os.chmod(path, DIRECTORY_MODE)


def private_database(path: str) -> None:
    """Before SQLite opens ``path``: its directory private, the database file created
    0600 (SQLite gives the WAL and SHM files the database's mode), and any of its files
    an older foreman left readable made 0600."""
    private_directory(os.path.dirname(os.path.abspath(path)))
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for suffix in _DATABASE_FILES:
        try:
            os.chmod(path + suffix, FILE_MODE)
        except FileNotFoundError:
            pass


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (replacing it), mode 0600 in a 0700 directory."""
    private_directory(os.path.dirname(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), FILE_MODE)  # an existing file keeps its mode otherwise
        file.write(data)
