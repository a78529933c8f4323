"""Which browser pages may open the WebSocket endpoint (the `Origin` check), without I/O.

A browser sends `Origin` with every WebSocket handshake and lets any page connect anywhere;
the check keeps pages of other sites from using a visitor's network position (or, one day,
ambient credentials) against the node. Clients that are not browsers send no Origin and are
let in: they authenticate with their token like everyone.
"""

from __future__ import annotations

import functools
import logging
from urllib.parse import urlsplit

log = logging.getLogger("chatd.web")
ANY = "*"


@functools.lru_cache(maxsize=8)
def parse_origins(setting: str) -> tuple[str, ...]:
    """`ws_origins`: comma-separated origins (scheme://host[:port]), or `*` for any. An entry
    that is not an origin is left out, with a warning (it could never match)."""
    out = []
    for item in setting.split(","):
        item = item.strip().rstrip("/").lower()
        if not item:
            continue
        if item != ANY:
            try:
                parts = urlsplit(item)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname) and \
                    not parts.path and parts.port != 0
            except ValueError:
                ok = False
            if not ok:
                log.warning("ws_origins: %r is not an origin like https://chat.example.org:"
                            " left out", item)
                continue
        out.append(item)
    return tuple(out)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def own_origin(origin: str, host_header: str, http_port: int, tls: bool) -> bool:
    """Whether `origin` is this node's own web app: the scheme of its HTTP listener, the
    listener's port, and the host the browser asked the WebSocket endpoint for (a page the
    node served from that host)."""
    if http_port < 0:
        return False
    try:
        o = urlsplit(origin)
        h = urlsplit(f"//{host_header}")
        port = o.port or _default_port(o.scheme)
    except ValueError:
        return False
    return (o.scheme == ("https" if tls else "http") and port == http_port
            and o.hostname is not None and o.hostname == h.hostname)


def origin_allowed(origin: str | None, host_header: str, allowed: tuple[str, ...],
                   http_port: int, tls: bool) -> bool:
    """No Origin (not a browser): yes. Otherwise the `ws_origins` list when one is set,
    else only the node's own web app (see own_origin)."""
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return ANY in allowed or origin in allowed
    return own_origin(origin, host_header, http_port, tls)


def request_origin(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"origin":
            return value.decode("latin-1")
    return None

