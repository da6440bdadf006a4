"""Addresses a server binds (`sgdtune ui --host`, `sgdtune storage-proxy --host`): one rule for
which ones keep it on this machine, and one way to write each in a URL. Standard library only.

Loopback, and so quiet: `localhost`, 127.0.0.0/8 and ::1. Everything else, the wildcards
0.0.0.0 and :: (every interface) included, is reachable from elsewhere: the servers have no
login, so the commands warn (docs/scale-out.md, Security). Addresses are read as the C library reads
them, so `0` is 0.0.0.0 and `127.1` is 127.0.0.1.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import ipaddress
import socket
import sys

WILDCARDS = ("0.0.0.0", "::")


def canonical(host: str) -> str:
    """`host` as an address in its usual form ('0' -> '0.0.0.0', '0:0::0' -> '::'); a name as given."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))  # the short IPv4 forms: 0, 127.1
    except OSError:
        return host


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only."""
    host = canonical(host)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def is_ipv6(host: str) -> bool:
    return ":" in canonical(host)


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets; a wildcard bind is reached on loopback."""
    host = canonical(host)
    if host in WILDCARDS or host == "":
        return "127.0.0.1" if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host else host


def warn_if_exposed(host: str, port: int, what: str) -> None:
    """One line on stderr when `host` is not loopback: the servers of `sgdtune ui` and
    `sgdtune storage-proxy` have no TLS and no login. Printed first, before anything is
    checked or started, so that it is seen even when the command stops on another error."""
    if is_loopback(host):
        return
    where = "every interface of this machine" if canonical(host) in WILDCARDS else canonical(host)
    print(f"warning: binding {where} (--host {host}), port {port}: {what} has no TLS and no authentication, so "
          "whoever reaches it can read and change every study; keep it to loopback or a private network "
          "(docs/scale-out.md, Security)", file=sys.stderr, flush=True)
