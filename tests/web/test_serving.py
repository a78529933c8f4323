"""The node's HTTP listener serving the web app (headers, caching, no traversal), and the
WebSocket endpoint's Origin check, over real sockets."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from chatd.protocol import Connection, Framing, Role
from chatd.protocol import frames as F
from chatd.web.origins import origin_allowed, parse_origins

from .conftest import WebNode


def get(node: WebNode, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True,  # (the path goes as written)
                        skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_the_app_is_served_with_a_strict_policy(node: WebNode) -> None:
    status, headers, body = get(node, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert f"connect-src 'self' ws://127.0.0.1:{node.ws_port};" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-cache"
    script = re.search(rb'src="/?(app-[A-Z0-9]+\.js)" integrity="sha384-', body)
    assert script is not None
    status, headers, _ = get(node, "/" + script.group(1).decode())
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert "immutable" in headers["cache-control"]
    status, _, _ = get(node, "/" + script.group(1).decode(),
                           headers={"If-None-Match": headers["etag"]})
    assert status == 304
    status, headers, config = get(node, "/config.json")
    assert status == 200 and f'"ws_port": {node.ws_port}'.encode() in config


def test_a_forged_host_header_does_not_reach_the_policy(node: WebNode) -> None:
    for host in ("evil.example; script-src *", "a b", "x'y", "[::1]:80; default-src *", "*",
                 "evil_example.com", "x.example,y.example", "[zz]"):
        status, headers, _ = get(node, "/", headers={"Host": host})
        if status == 400:  # refused by the HTTP layer (h11) already
            continue
        csp = headers["content-security-policy"]
        connect = re.search(r"connect-src ([^;]*);", csp)
        assert connect is not None and "*" not in csp and "evil" not in csp, host
        assert re.fullmatch(rf"'self'( ws://(\[::1\]|[a-z.]+):{node.ws_port})?",
                            connect.group(1)), (host, csp)
    csp = get(node, "/", headers={"Host": "chat.example.org:7780"})[1]["content-security-policy"]
    assert f"connect-src 'self' ws://chat.example.org:{node.ws_port};" in csp


@pytest.mark.parametrize("path", [
    "/../pyproject.toml", "/..%2f..%2fpyproject.toml", "/%2e%2e/%2e%2e/README.md", "//etc/passwd",
    "/app.ts", "/src/app.ts", "/dist/index.html", "/index.html/..", "/.%2e/data/chatd.db",
    "/secret", "/package.json",
])
def test_nothing_outside_the_bundle_is_served(node: WebNode, path: str) -> None:
    status, headers, body = get(node, path)
    assert status in (400, 404), (path, status)
    assert b"import" not in body and b"[project]" not in body
    if status == 404:
        assert "content-security-policy" in headers


def test_other_methods_and_the_media_paths(node: WebNode) -> None:
    assert get(node, "/", "POST")[0] == 405
    assert get(node, "/", "HEAD")[2] == b""
    status, _, body = get(node, "/v1/media/" + "a" * 64)
    assert status == 401 and b"token" in body  # the media app answers /v1/...


async def hello(node: WebNode, origin: str | None) -> Any:
    headers = [(b"origin", origin.encode())] if origin is not None else []
    async with open_websocket_url(f"ws://127.0.0.1:{node.ws_port}/ws", extra_headers=headers,
                                  connect_timeout=10) as ws:
        conn = Connection(Role.CLIENT, Framing.MESSAGE)
        await ws.send_message(conn.send(F.Hello(version=1, token=node.token("alice"))))
        conn.receive_data(await ws.get_message())
        return conn.next_event()


async def refused(node: WebNode, origin: str) -> int:
    with pytest.raises(ConnectionRejected) as info:
        await hello(node, origin)
    return info.value.status_code


async def test_the_websocket_takes_its_own_pages_and_clients_without_origin(node: WebNode) -> None:
    assert isinstance(await hello(node, None), F.Welcome)
    assert isinstance(await hello(node, f"http://127.0.0.1:{node.http_port}"), F.Welcome)
    assert await refused(node, "http://evil.example") == 403
    assert await refused(node, f"http://evil.example:{node.http_port}") == 403
    assert await refused(node, f"http://127.0.0.1:{node.tcp_port}") == 403
    assert await refused(node, f"https://127.0.0.1:{node.http_port}") == 403
    assert await refused(node, "null") == 403


@pytest.fixture
def listed_node(tmp_path: Path, bundle: Path) -> Iterator[WebNode]:
    n = WebNode(tmp_path / "data", env={"CHATD_WS_ORIGINS": "https://chat.example.org, "
                                        "http://localhost:3000"})
    n.start()
    try:
        yield n
    finally:
        n.stop()


async def test_ws_origins_lists_the_origins_taken(listed_node: WebNode) -> None:
    node = listed_node
    assert isinstance(await hello(node, "https://chat.example.org"), F.Welcome)
    assert isinstance(await hello(node, "http://localhost:3000"), F.Welcome)
    assert isinstance(await hello(node, None), F.Welcome)
    assert await refused(node, f"http://127.0.0.1:{node.http_port}") == 403
    assert await refused(node, "https://chat.example.org.evil.example") == 403


def test_origin_rules() -> None:
    assert parse_origins(" https://a.example/ ,*, nonsense, ftp://x") == ("https://a.example", "*")
    assert origin_allowed("https://anything.example", "h", ("*",), 80, False)
    assert origin_allowed(None, "", (), -1, False)
    assert not origin_allowed("http://h:80", "h", (), -1, False)  # no web app: no own origin
    assert origin_allowed("http://h", "h:7778", (), 80, False)  # default port
    assert origin_allowed("https://H:8443", "h:7778", (), 8443, True)
    assert not origin_allowed("http://h:8443", "h:7778", (), 8443, True)
    assert not origin_allowed("http://[::1]:80", "h", (), 80, False)



def test_chatd_token_prints_a_sign_in_link(tmp_path: Path) -> None:
    env = {**os.environ, "CHATD_HTTP_PORT": "7999"}
    out = subprocess.run([sys.executable, "-m", "chatd", "token", "alice", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, env=env, check=True)
    token = out.stdout.strip()
    assert token and "\n" not in token  # $(chatd token alice) is still the token
    assert f"http://127.0.0.1:7999/#token={token}" in out.stderr
