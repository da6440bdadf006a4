"""Reads of an MLflow store made by the spare writer process (store/writer_child.py), which has
MLflow imported already. The study command reads a few runs at each end (the resume check of
the parent run, the closing recommendation), and importing MLflow for them in the training
process took 1-2 s of CPU at each: as long as the command itself on a short study.

A read goes through the spare only: a process held by a tracker has replies of its own on the
pipe. Any read that fails there (a damaged store, the process gone, a value that cannot be
pickled) is made again in this process by a RunReader, so that what is raised is RunReader's
own; without a spare (the Python API, --no-tracking) every read is made here.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import Any

from . import writer_child
from .run_reader import RunReader, RunRecord


class PipedReader:
    """RunReader's reads that the study command makes, through the spare writer process."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._here: RunReader | None = None  # made at the first read that the spare could not make

    def find_run(self, run_id: str) -> RunRecord | None:
        return self._read("find_run", run_id)

    def child_runs(self, parent: RunRecord) -> dict[int, RunRecord]:
        return self._read("child_runs", parent)

    def metric_history(self, run_id: str, key: str) -> dict[str, list]:
        return self._read("metric_history", run_id, key)

    def read_artifact(self, run_id: str, folder: str, suffix: str) -> tuple[str, bytes] | None:
        return self._read("read_artifact", run_id, folder, suffix)

    def _read(self, method: str, *args: Any) -> Any:
        child = writer_child.spare_child()
        if child is not None:
            try:
                child.commands.send(("read", os.getcwd(), self.tracking_uri, method, args))
                while True:  # a spare has no other replies pending; anything else is skipped
                    kind, *reply = child.replies.recv()
                    if kind == "read":
                        break
                ok, value = reply
                if ok:
                    return value
            except BaseException as e:  # gone, or Ctrl-C while waiting: its reply would be read by the next read
                writer_child.drop_spare()
                if not isinstance(e, (OSError, EOFError)):
                    raise
        if self._here is None:
            self._here = RunReader(self.tracking_uri)
        return getattr(self._here, method)(*args)
