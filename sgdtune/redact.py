"""Secrets masked out of anything sgdtune writes or prints: console lines, error messages,
MLflow tags, study attributes, reports, the uploaded experiment file, and whatever the
libraries it runs print (`mask_output`). No imports beyond the standard library, so the
command line can use it before anything heavy loads.

The rule (the value becomes `***`, the rest of the text is kept):
- A URL's password: `scheme://user:PW@host`, `scheme://:PW@host`. The user name runs to the
  first ':' and the password to the LAST '@' of the URL's authority, which ends at '/', '?',
  '#', a blank or a quote (RFC 3986): `postgresql://u:SE@CRET@host` shows `u:***@host`. A
  password holding '/', '?' or '#' must be percent-encoded, as URLs require.
- A parameter `NAME=VALUE` (in a URL's query, a libpq connection string `host=h password=PW`,
  or any text) whose NAME, in any case, is `passwd` or `pwd`, or ends in `password`, `secret`
  or `token` (sslpassword, access_token, client_secret), or ends in a key that says it is a
  credential: `api`, `access`, `secret`, `private`, `auth`, `client`, `account`, `signing`,
  `session`, `master` or `encryption` before `key` (api_key, apiKey, AWS_SECRET_ACCESS_KEY,
  x-api-key). A bare `key=` is masked inside a URL's query only (`?key=` is how some APIs
  take theirs).
- Nothing else: other names ending in `key` are not secrets (MLflow's `viewStateShareKey`,
  `orderByKey`; libpq's `sslkey` is a file's path), and text with neither a URL password nor
  such a parameter is left as it is (`--set: must look like KEY=VALUE`).

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

MASK = "***"

# scheme://  user (up to the first ':')  :  password (up to the authority's last '@')  @
_AUTHORITY_CHAR = r"[^/?#\s'\"<>]"
_USERINFO = re.compile(rf"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#\s'\"<>]*:){_AUTHORITY_CHAR}*@")
# NAME=VALUE, NAME at the start of the text or after one of ? & ; , or a blank
# (a value stops at a quote too: a quoted argument in a recorded command keeps its closing quote)
_PARAM = re.compile(r"(?:^|(?<=[?&;\s,]))(?P<name>[\w.\-]+)=(?P<value>[^&\s#,;'\"]*)")
_SECRET_NAME = re.compile(
    r"(?:password|secret|token"
    r"|(?:api|access|secret|private|auth|client|account|signing|session|master|encryption)[_.\-]?key)$"
    r"|^(?:passwd|pwd)$",
    re.IGNORECASE,
)


def _masked_param(match: re.Match) -> str:
    name = match["name"]
    in_query = match.start() > 0 and match.string[match.start() - 1] in "?&"
    if _SECRET_NAME.search(name) or (in_query and name.lower() == "key"):
        return f"{name}={MASK}"
    return match[0]


def redact(text: str | None) -> str | None:
    """`text` with every URL password and secret parameter replaced by '***'."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m["head"] + MASK + "@", text)
    return _PARAM.sub(_masked_param, text)


redact_url = redact  # the name store/tracking.py, study/console.py and the report import


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string redacted; keys too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


# -- every line a process prints ---------------------------------------------------------------


class MaskedStream:
    """A text stream that passes on what is written to `inner`, a line at a time, masked.
    A line is held until its newline or a flush (a URL cut in two by separate writes, as
    print's pieces are, is masked whole); everything else is the inner stream's."""

    def __init__(self, inner):
        self.inner = inner
        self._pending = ""
        self._lock = threading.Lock()  # rich's refresh thread prints beside the main thread

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if "\n" in self._pending:
                lines, _, self._pending = self._pending.rpartition("\n")
                self.inner.write(redact(lines + "\n"))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.inner.write(redact(self._pending))
                self._pending = ""
        self.inner.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the inner stream's
        return getattr(self.inner, name)


def mask_output() -> None:
    """From now on everything this process prints is masked: sys.stdout and sys.stderr
    become MaskedStreams, and so do the streams of logging handlers made before (Optuna's,
    made at its import, holds the stream it found then). Called once at the start of every
    process sgdtune starts (cli.interruptible, the writer, each worker); idempotent."""
    swapped = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, MaskedStream):
            continue
        swapped[id(stream)] = masked = MaskedStream(stream)
        setattr(sys, name, masked)
    for dunder, name in (("__stdout__", "stdout"), ("__stderr__", "stderr")):
        original = getattr(sys, dunder)
        if original is not None and id(original) not in swapped:  # a handler may hold the original
            swapped[id(original)] = getattr(sys, name)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in swapped:
                handler.setStream(swapped[id(handler.stream)])
