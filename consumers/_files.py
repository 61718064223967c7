"""Files replaced whole: a crash or an error leaves the old file or the new one, never a part."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


class NotReplaceableError(OSError):
    """The target exists and is not a regular file: replacing it would destroy a device, fifo, link or folder."""


def refusal(path: Path) -> str | None:
    """Why `path` must not be replaced whole, or None when it is a regular file or does not exist.

    Symbolic links are refused, not followed: the rename would replace the link itself, and
    writing through it could reach any file the link names.
    """
    error = _refused(path)
    return None if error is None else ("it is a folder" if error.errno == errno.EISDIR else error.strerror)


def _refused(path: Path) -> NotReplaceableError | None:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there (its folder is checked where it is made)
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        why = "it is a symbolic link (the file is replaced whole, not written through a link): name the file itself"
    elif stat.S_ISDIR(mode):
        return NotReplaceableError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    else:
        why = "it is not a regular file (a device, fifo or socket), and the file is replaced whole"
    return NotReplaceableError(errno.EEXIST, why, str(path))


def cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in `folder` (its OS error, said plainly), or None when one can: a
    temporary file is created there and removed (permission bits lie to root, and /proc or /sys refuse
    what they seem to allow)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".partial")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(tmp)
    return None


#: Characters of the target's name kept in the temporary name: a name of NAME_MAX (255 bytes)
#: must still fit with the prefix and mkstemp's suffix.
_NAME_KEPT = 32


def _temporary_prefix(path: Path) -> str:
    """``.<start of the name>.``: the temporary file is recognizable, and short whatever the name."""
    return f".{path.name[:_NAME_KEPT]}."


def _mode(path: Path) -> int:
    """The permission bits of the file written at `path`: those of the file it replaces, else
    as open() would create it (0666 less the umask; not mkstemp's 0600)."""
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return 0o666 & ~current_umask()


@contextmanager
def replaced_atomically(path: Path) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside `path`; when the block ends without an error, fsync it,
    rename it over `path` and fsync the folder (so the rename itself survives a crash).

    The new file keeps the permission bits of the one it replaces (a new name gets 0666 less
    the umask), not its owner or group: it is a new file, the writer's.

    NotReplaceableError (its strerror says why) when `path` exists and is not a regular file
    (see ``refusal``); an OSError naming `path` and its folder (not the temporary file) when the
    folder refuses it.
    """
    refused = _refused(path)
    if refused:
        raise refused
    folder_name = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".partial")
    except OSError as e:
        raise OSError(e.errno, f"cannot create a file in {folder_name}: {e.strerror or e}", str(path)) from e
    try:
        os.fchmod(fd, _mode(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        refused = _refused(path)  # again: it may have appeared meanwhile
        if refused:
            raise refused
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (see ``replaced_atomically``)."""
    with replaced_atomically(path) as f:
        f.write(data)
