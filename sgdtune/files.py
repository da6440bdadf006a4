"""Files written whole or not at all: a reader (or the next run) sees the previous file or
the new one, never half of one, whatever happens during the write (kill -9, a full disk, a
file-size limit). Standard library only: any module can write its files this way.

`atomic_write` writes a temporary file in the target's own folder (a rename is atomic only
within one file system), flushes it to the disk (fsync), then renames it over the target and
syncs the folder. If the write fails, the temporary file is removed and the target is as it
was. A process killed mid-write leaves the target as it was and, at worst, a temporary
`.NAME.tmp-PID-...` file beside it.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

Content = str | bytes | Callable[[BinaryIO], object]  # text (UTF-8), bytes, or a function that writes


def atomic_write(path: str | Path, content: Content, *, field: str | None = None) -> Path:
    """Write `content` to `path` atomically (see the module's docstring); the path written.

    With `field` (the flag or key that named the file, e.g. "--out"), a refused target or a
    failed write is an InputError naming it (one line at the command line, exit 2); without,
    the OSError is raised as it came (after the temporary file is removed)."""
    return atomic_write_all({path: content}, field=field)[0]


def atomic_write_all(files: Mapping[str | Path, Content], *, field: str | None = None) -> list[Path]:
    """Several files written as one: every temporary file is written before any is renamed,
    so a failed write (a full disk) changes none of them (a report's .json and .html stay a
    pair). The paths written, in order."""
    targets = [(check_target(path, field), content) for path, content in files.items()]
    staged: list[tuple[str, Path]] = []
    try:
        try:
            for target, content in targets:
                staged.append((_stage(target, content), target))
            for tmp, target in staged:
                os.replace(tmp, target)
        except BaseException:  # a failed write or Ctrl-C: no temporary file left behind
            for tmp, _ in staged:
                _remove(tmp)
            raise
    except OSError as e:
        if field is None:
            raise
        where = e.filename or (targets[-1][0] if targets else "")
        raise InputError(field, f"must be a file that can be written; writing it failed ({e.strerror or e}), "
                         "and the previous file, if any, is unchanged", repr(str(where))) from None
    for folder in {target.parent for _, target in staged}:
        _sync_folder(folder)
    return [target for _, target in staged]


def check_target(path: str | Path, field: str | None = None) -> Path:
    """The file `atomic_write` would replace: a link's target (the link stays). Refused when it
    is a folder, something other than a regular file (a rename over /dev/null would replace
    the device) or in a folder that does not exist: an InputError naming `field`, or without
    one an OSError. Callers check early with it, before the work that makes the content."""
    real = Path(os.path.realpath(path))
    problem = None
    if real.is_dir():
        problem = "must be a file name, not a folder"
    elif real.exists() and not real.is_file():
        problem = "must be a regular file (or a new name), not a device, pipe or socket"
    elif not real.parent.is_dir():
        problem = "must be a file in an existing folder"
    if problem is None:
        return real
    if field is None:
        raise OSError(f"{path}: {problem}")
    raise InputError(field, problem, repr(str(path)))


def _stage(target: Path, content: Content) -> str:
    """A temporary file beside `target` holding `content`, on the disk; its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(target, tmp)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _copy_mode(target: Path, tmp: str) -> None:
    """The new file gets the old one's permissions, or a new file's usual ones (0666 less the
    umask; mkstemp makes it 0600)."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every system opens a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
