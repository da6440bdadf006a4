"""Optuna's journal file (the embedded default storage): opened, and a torn last record
repaired. A process killed mid-write leaves its last line torn: it is cut off (or, whole but
for its newline, ended) with the original kept beside it; damage before the last line, or a
file that is not a journal, is an InputError naming --storage.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .checks import SQLITE_HEADER, writable_file

if TYPE_CHECKING:
    import optuna

JOURNAL_RECORD = b'{"op_code":'  # how each line Optuna's journal backend writes begins


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """The journal file at `path`, checked writable, its torn last record repaired (module docstring)."""
    import optuna

    writable_file("--storage", path, str(path))
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    if path.exists() and path.stat().st_size and not _last_record_whole(path):
        # The last record is torn, or being written: look again, and repair, while no process
        # writes (Optuna's own lock).
        lock.acquire()
        try:
            repair_journal(path)
        finally:
            lock.release()
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        # Damage before the last line (only now read in full: Optuna's replay found it), or
        # records that are JSON but not Optuna's.
        _journal_damage(path.read_bytes(), path)
        raise InputError("--storage", f"must be an Optuna journal file; its records cannot be replayed ({e!r}); "
                         "pass another --storage for a new study", repr(str(path))) from None


def _last_record_whole(path: Path, chunk: int = 1 << 20) -> bool:
    """The file's last line is a JSON record ended by its newline (reads the file's end only)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - chunk))
        tail = f.read()
    if not tail.endswith(b"\n"):
        return False
    start = tail.rfind(b"\n", 0, len(tail) - 1)
    if start < 0 and size > len(tail):  # one record longer than the chunk: read it all
        return _last_record_whole(path, size + 1)
    return _is_record(tail[start + 1:-1])


def _journal_damage(data: bytes, path: Path) -> tuple[int, bool] | None:
    """None if every line is a whole JSON record; else (offset where the last, torn, record
    starts, whether that record is complete JSON missing only its newline). Damage earlier in
    the file, or a file that is not a journal at all, is an InputError."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        lines.append(tail)
    offset = 0
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not _is_record(line):
            if number == 1 and not line.startswith(JOURNAL_RECORD):
                what = "an SQLite database: pass it as sqlite:///PATH" if data.startswith(SQLITE_HEADER) else \
                    "its first line is not an Optuna journal record"
                raise InputError("--storage", f"must be an Optuna journal file; this one is not ({what}); or pass "
                                 "another --storage for a new study", repr(str(path)))
            if not last or not line.startswith(b"{"):
                raise InputError(
                    "--storage",
                    f"must be an Optuna journal file of one JSON record per line; line {number} of {len(lines)} "
                    "is damaged and is not the last, so sgdtune cannot tell what was lost: restore a copy of the "
                    "file, or pass another --storage for a new study", repr(str(path)))
            return offset, False
        if last and tail:  # a whole record, but its newline never reached the file
            return offset, True
        offset += len(line) + 1
    return None


def _is_record(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def repair_journal(path: Path) -> Path:
    """Cut a torn last record off a journal (or end a whole one with its newline), keeping
    the original beside it as <name>.torn-<UTC time>; says so on stderr. Returns the copy."""
    data = path.read_bytes()
    damage = _journal_damage(data, path)
    if damage is None:
        return path
    offset, whole = damage
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    shutil.copy2(path, backup)
    with open(path, "r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    done = ("ended its last record, which had lost its newline" if whole else
            f"cut off its last record, torn by an interrupted write ({len(data) - offset} bytes)")
    print(f"sgdtune: repaired the Optuna journal {path}: {done}; the original is kept as {backup}", file=sys.stderr)
    return backup
