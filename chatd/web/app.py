"""The web app's static files, as an ASGI app in front of the media app.

  GET /               index.html (names the hashed script and style, with integrity hashes)
  GET /config.json    where the WebSocket endpoint is: {"ws_port", "ws_path", "tls"}
  GET /app-<hash>.js, /app-<hash>.css   the bundle (cached for good: the name changes)
  /v1/...             the media app (image uploads and downloads)

Only the files of the bundle directory, read once at start, are served: a path is looked
up by exact name in that table, so no path reaches the filesystem (no traversal). Every
answer carries a strict Content-Security-Policy: scripts and styles only from this origin,
no inline code, connections only to this origin and the WebSocket port.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("chatd.web")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
         ".ico": "image/x-icon", ".json": "application/json"}
HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
NOT_BUILT = ("chatd's web app is not built: run scripts/serve, or `npm ci && npm run build`"
             " in clients/web\n")


def find_bundle() -> Path | None:
    """The built bundle: clients/web/dist next to this source tree, or chatd/web/static."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "clients" / "web" / "dist", here / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


class WebApp:
    """ASGI: the bundle's files and /config.json; /v1/... and the lifespan go to `inner`."""

    def __init__(self, inner: Any, bundle: Path | None, ws_port: int, tls: bool) -> None:
        self.inner = inner
        self.ws_port = ws_port
        self.tls = tls
        self.files: dict[str, tuple[bytes, str, str]] = {}  # path -> body, type, etag
        if bundle is not None:
            for path in sorted(bundle.iterdir()):
                if path.is_file() and path.suffix in TYPES:
                    body = path.read_bytes()
                    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                    self.files["/" + path.name] = (body, TYPES[path.suffix], etag)
        if "/index.html" not in self.files:
            log.warning(NOT_BUILT.strip())
        config = {"ws_port": ws_port, "ws_path": "/ws", "tls": tls}
        body = json.dumps(config).encode()
        self.files["/config.json"] = (body, TYPES[".json"],
                                      '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/"):
            await self.inner(scope, receive, send)
            return
        path = "/index.html" if scope["path"] == "/" else scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _hostname(headers.get("host", ""))
        if scope["method"] not in ("GET", "HEAD"):
            await self._answer(send, 405, b"method not allowed\n", "text/plain; charset=utf-8",
                               host, [(b"allow", b"GET, HEAD")])
            return
        found = self.files.get(path)
        if found is None:
            if path == "/index.html":
                await self._answer(send, 503, NOT_BUILT.encode(), "text/plain; charset=utf-8", host)
            else:
                await self._answer(send, 404, b"not found\n", "text/plain; charset=utf-8", host)
            return
        body, ctype, etag = found
        hashed = path not in ("/index.html", "/config.json")
        cache = b"public, max-age=31536000, immutable" if hashed else b"no-cache"
        extra = [(b"etag", etag.encode()), (b"cache-control", cache)]
        if headers.get("if-none-match") == etag:
            await self._answer(send, 304, b"", ctype, host, extra, head=True)
            return
        await self._answer(send, 200, body, ctype, host, extra, head=scope["method"] == "HEAD")

    def csp(self, host: str) -> str:
        ws = f"{'wss' if self.tls else 'ws'}://{host}:{self.ws_port}" if host else ""
        return ("default-src 'none'; script-src 'self'; style-src 'self'; "
                "img-src 'self' data: blob:; "
                f"connect-src 'self' {ws}".rstrip() + "; "
                "manifest-src 'self'; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'")

    async def _answer(self, send: Any, status: int, body: bytes, ctype: str, host: str,
                      extra: list[tuple[bytes, bytes]] | None = None, head: bool = False
                      ) -> None:
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", self.csp(host).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head or status == 304 else body})


def with_web(media_app: Any, ws_port: int, tls: bool) -> Any:
    """The node's HTTP app: the web app's files in front of the media app."""
    return WebApp(media_app, find_bundle(), ws_port, tls)


def _hostname(host_header: str) -> str:
    """The host name of a Host header, if it is a plain one (it goes into the CSP)."""
    name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    if host_header.startswith("[") and "]:" in host_header:
        name = host_header.rsplit(":", 1)[0]
    return name if HOST.fullmatch(name) else ""


SERVE_HTTP_PORT = 7780  # the HTTP port scripts/serve gives a node when the user gives none


def sign_in_link(config: Any, token: str) -> str:
    """The web app's sign-in link for a token (`chatd token` prints it): the token goes in
    the URL fragment, which browsers never send to a server; the app moves it to the tab's
    sessionStorage and out of the address bar."""
    base = config.media_url.rstrip("/")
    if not base:
        host = config.host if config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        port = config.http_port if config.http_port > 0 else SERVE_HTTP_PORT
        base = f"{'https' if config.tls_cert else 'http'}://{host}:{port}"
    return f"{base}/#token={token}"
