"""The node's HTTP listener: a small ASGI app served by Hypercorn's trio worker.

  PUT /v1/upload          Authorization: Bearer <slot token>; body: the file -> 201, the Media
                          reference as msgpack (application/msgpack)
  GET /v1/media/<id>      Authorization: Bearer <device token> (+ X-Chatd-Device when the
                          token names no device) -> the image (Range, ETag); private caching
  GET /v1/media/<id>/link Authorization: Bearer <device token> -> {"url": a signed link,
                          "exp": unix s} (msgpack, or JSON if asked with Accept)
  GET /v1/media/<id>?exp=<unix s>&sig=<sig>   no token: the image, cacheable by a CDN
                          (public) until exp

Errors are text/plain with a status that says why (401 token, 403 bad or expired link, 404
unknown or not yours, 409 slot used, 413 too large, 415 not an image, 422 hash mismatch, 503
blob store down).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import trio

from chatd.admin.revocations import REVOKED_MESSAGE, is_void
from chatd.auth import AuthError, read_token
from chatd.protocol.schema import to_map

from .blobs import BlobStoreError
from .service import BLOB_ID, ConvMode, MediaError, MediaService, Members

log = logging.getLogger("chatd.media")
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
Member = Callable[[str, str], Awaitable[bool]]


class MediaApp:
    """ASGI app over a MediaService; `member(user, conv)` says who takes part in what,
    `conv_mode(conv)` and `members(conv)` what a download changes (TEMPORARY chats)."""

    def __init__(self, service: MediaService, secret: bytes, member: Member,
                 conv_mode: ConvMode, members: Members,
                 revoked_at: Callable[[str, str], Awaitable[int]] | None = None) -> None:
        self.service = service
        self.revoked_at = revoked_at  # (chatd admin revoke: the store's record)
        self.secret = secret
        self.member = member
        self.conv_mode = conv_mode
        self.members = members

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/upload" and method in ("PUT", "POST"):
                await self._upload(token, headers, receive, send)
            elif path.startswith("/v1/media/") and path.endswith("/link") and method == "GET":
                await self._link(token, path[10:-5], headers, send)
            elif path.startswith("/v1/media/") and method in ("GET", "HEAD"):
                query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
                await self._download(token, path[10:], headers, method, send, query)
            else:
                await _text(send, 404, "not found")
        except MediaError as exc:
            await _text(send, exc.status, exc.message)
        except BlobStoreError as exc:
            log.warning("media store unavailable: %s", exc)
            await _text(send, 503, "media store unavailable: retry later")

    async def _upload(self, token: str, headers: dict[str, str], receive: Any,
                      send: Any) -> None:
        if not token:
            raise MediaError(401, "an upload needs Authorization: Bearer <slot token>")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.service.max_upload:
            raise MediaError(413, f"at most {self.service.max_upload} bytes")

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise MediaError(400, "upload cut off")
                if body := msg.get("body"):
                    yield body
                if not msg.get("more_body"):
                    return

        media = await self.service.upload(token, chunks())
        await send({"type": "http.response.start", "status": 201, "headers": [
            (b"content-type", b"application/msgpack")]})
        await send({"type": "http.response.body", "body": msgpack.packb(to_map(media))})

    async def _device(self, token: str, headers: dict[str, str]) -> tuple[str, str]:
        """(user, device) of a device token; a token that names no device is for the device
        the client says (X-Chatd-Device, else "default"), as when signing in. A token the
        operator revoked (chatd admin revoke) is refused here too."""
        try:
            user, device, issued = read_token(self.secret, token)
        except AuthError as exc:
            raise MediaError(401, f"a download needs the device's token: {exc}") from None
        said = headers.get("x-chatd-device", "")
        if device is None:
            device = said[:64] or "default"
        elif said and said != device:
            raise MediaError(401, f"token is for device {device!r}")
        if self.revoked_at is not None and is_void(issued, await self.revoked_at(user, device)):
            raise MediaError(401, REVOKED_MESSAGE)
        return user, device

    async def _link(self, token: str, blob_id: str, headers: dict[str, str], send: Any
                    ) -> None:
        user, _device = await self._device(token, headers)
        if BLOB_ID.fullmatch(blob_id) is None:
            raise MediaError(404, "no such media")
        await self.service.may_download(user, blob_id, self.member)
        url, exp = self.service.make_link(blob_id)
        if "application/json" in headers.get("accept", ""):
            body, kind = json.dumps({"url": url, "exp": exp}).encode(), b"application/json"
        else:
            body, kind = msgpack.packb({"url": url, "exp": exp}), b"application/msgpack"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", kind), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _download(self, token: str, blob_id: str, headers: dict[str, str], method: str,
                        send: Any, query: dict[str, list[str]]) -> None:
        if BLOB_ID.fullmatch(blob_id) is None:
            raise MediaError(404, "no such media")
        device: tuple[str, str] | None = None
        if "sig" in query or "exp" in query:  # a signed link: no token, anyone holding it
            exp = self.service.check_link(blob_id, query.get("exp", [""])[0],
                                          query.get("sig", [""])[0])
            media = await self.service.media(blob_id)
            if media is None:
                raise MediaError(404, "no such media")
            cache = f"public, max-age={max(0, exp - int(time.time()))}, immutable"
        else:
            device = await self._device(token, headers)
            media = await self.service.may_download(device[0], blob_id, self.member)
            cache = "private, max-age=31536000, immutable"
        etag = f'"{blob_id}"'
        common = [(b"etag", etag.encode()), (b"accept-ranges", b"bytes"),
                  (b"cache-control", cache.encode()),
                  (b"content-type", media.mime.encode())]
        if headers.get("if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        size, start, end, status = media.size, 0, media.size, 200
        rng = headers.get("range")
        if rng and headers.get("if-range", etag) == etag:
            m = RANGE.fullmatch(rng.strip())
            if m is None or m.group(1) == m.group(2) == "":
                raise MediaError(416, "only one range bytes=a-b is served")
            if m.group(1) == "":  # the last n bytes
                start = max(0, size - int(m.group(2)))
            else:
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            if start >= end:
                await send({"type": "http.response.start", "status": 416,
                            "headers": [(b"content-range", f"bytes */{size}".encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
            status = 206
            common.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": [
            *common, (b"content-length", str(end - start).encode())]})
        if method == "GET":
            async for chunk in self.service.download(blob_id, start, end):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        if device is not None and method == "GET" and start == 0 and end == size:  # all sent
            try:
                await self.service.downloaded(*device, blob_id, self.conv_mode, self.members)
            except Exception as exc:  # (the collector forgets it later instead)
                log.warning("could not record a download of %s: %s", blob_id, exc)


async def _text(send: Any, status: int, message: str) -> None:
    body = (message + "\n").encode()
    try:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # (the response had started: the connection is closed instead)
        raise MediaError(status, message) from None


def http_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_http(app: MediaApp, sock: socket.socket, tls_cert: str = "", tls_key: str = "",
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve app on the listening socket until cancelled (Hypercorn's trio worker)."""
    from hypercorn.config import Config as HConfig
    from hypercorn.config import Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    cfg = HConfig()
    cfg.accesslog = None
    cfg.errorlog = log
    cfg.keep_alive_timeout = 30
    cfg.h11_max_incomplete_size = 16 * 1024
    cfg.graceful_timeout = 1
    if tls_cert:
        cfg.certfile, cfg.keyfile = tls_cert, tls_key
        sockets = Sockets([sock], [], [])
    else:
        sockets = Sockets([], [sock], [])
    asgi: Any = app
    await worker_serve(wrap_app(asgi, cfg.wsgi_max_body_size, "asgi"), cfg, sockets=sockets,
                       task_status=task_status)
