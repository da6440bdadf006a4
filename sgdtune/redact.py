"""Secrets masked out of anything sgdtune writes: console lines, error messages, MLflow tags,
study attributes, reports, the uploaded experiment file. One function, no imports beyond
the standard library, so the command line can use it before anything heavy loads.

Masked (the value becomes `***`, the rest of the text is kept):
- a URL's password: `scheme://user:PW@host`, `scheme://:PW@host` (SQLAlchemy reads the
  password up to the first '@' after the ':'; the user name may itself hold an '@');
- a query or connection-string parameter whose name is password, passwd, pwd, or ends in
  secret, token or key (sslpassword, access_token, api_key, ...), any case:
  `postgresql://user@host/db?password=PW`, `host=h password=PW`.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://  user (no ':', '/', space; may hold '@')  :  password (up to the first '@')  @
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/\s]*:)[^@\s]*@")
_PARAM = re.compile(
    r"(?P<head>(?:^|(?<=[?&;\s,]))(?:[\w.\-]*(?:password|secret|token|key)|passwd|pwd)=)[^&\s#,;]*",
    re.IGNORECASE,
)


def redact(text: str | None) -> str | None:
    """`text` with every URL password and secret parameter replaced by '***'."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m["head"] + MASK + "@", text)
    return _PARAM.sub(lambda m: m["head"] + MASK, text)


redact_url = redact  # the name tracking.py, console.py and the report import


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string redacted; keys too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value
