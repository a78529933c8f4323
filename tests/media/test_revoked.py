"""A token the operator revoked (chatd admin revoke) downloads nothing either: the HTTP
listener reads the same revocation record as sign-in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import chatd_client
import trio

from chatd.auth import make_token
from chatd.core import now_ms
from chatd.server import ChatServer

from .images import photo
from .test_e2e import ahttp, connect, next_message, node  # noqa: F401 (node: a fixture)


async def test_a_revoked_token_cannot_download(node: ChatServer,  # noqa: F811
                                               tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(640, 480, seed=7))
    async with connect(node, "alice") as alice, connect(node, "bob") as bob:
        await alice.set_mode("d:alice:bob", chatd_client.Mode.PERMANENT)
        await alice.send_image("bob", str(src))
        image = (await next_message(bob)).media[0]
    url = f"{node.media_url}/v1/media/{image.id}"
    old = make_token(node.secret, "bob", "tablet")
    status, _, data = await ahttp("GET", url, old)
    assert status == 200 and hashlib.sha256(data).digest() == image.sha256
    await trio.sleep(0.002)  # (a revocation voids tokens issued at or before it, in ms)
    await node.store.revoke("bob", "tablet", now_ms())
    status, _, body = await ahttp("GET", url, old)
    assert status == 401 and b"revoked" in body, body
    # a token made after the revocation, and the user's other devices, still download
    await trio.sleep(0.002)
    for token in (make_token(node.secret, "bob", "tablet"), make_token(node.secret, "bob")):
        assert (await ahttp("GET", url, token))[0] == 200
