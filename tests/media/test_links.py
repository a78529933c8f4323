"""Signed, expiring download links: what a CDN in front of the nodes serves without the
device's token; handed out only to the chat's members, valid on every node sharing the secret."""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from pathlib import Path

import chatd_client
import chatd_client.media
import pytest

from chatd.auth import make_token
from chatd.media.service import MediaService
from chatd.server import ChatServer

from .images import photo
from .test_e2e import ahttp, connect, next_message, node  # noqa: F401 (node: a fixture)


async def test_a_signed_link_needs_no_token_and_expires(node: ChatServer,  # noqa: F811
                                                        tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(800, 600, seed=51))
    async with connect(node, "alice") as alice, connect(node, "bob") as bob:
        await alice.set_mode("d:alice:bob", chatd_client.Mode.PERMANENT)
        await alice.send_image("bob", str(src))
        image = (await next_message(bob)).media[0]
        url, exp = await chatd_client.media.link(bob, image)
        assert time.time() + node.media.link_ttl <= exp <= time.time() + 2 * node.media.link_ttl
        asked = time.time()  # (the node reckons max-age after this, however slow the GET)
        status, headers, data = await ahttp("GET", url)  # no Authorization at all
        assert status == 200 and hashlib.sha256(data).digest() == image.sha256
        cache = headers["cache-control"]
        assert cache.startswith("public, max-age=") and "immutable" in cache
        assert 0 < int(cache.split("max-age=")[1].split(",")[0]) <= exp - asked + 1
        status, _, part = await ahttp("GET", url, headers={"Range": "bytes=0-9"})
        assert status == 206 and part == data[:10]
        # alice (a member too) is handed the same URL: one cache entry in the CDN
        assert (await chatd_client.media.link(alice, image))[0] == url

        # forged: another blob's id, another expiry, a made-up signature
        parts = urllib.parse.urlsplit(url)
        q = dict(urllib.parse.parse_qsl(parts.query))
        base = f"{alice.media_url}/v1/media/{image.id}"
        for bad in (f"{base}?exp={int(q['exp']) + 3600}&sig={q['sig']}",
                    f"{base}?exp={q['exp']}&sig={'A' * 43}",
                    f"{base}?exp={q['exp']}", f"{base}?exp=soon&sig={q['sig']}"):
            status, headers, body = await ahttp("GET", bad)
            assert status == 403 and b"link" in body, (bad, body)
            assert headers["content-type"].startswith("text/plain")
            assert headers["cache-control"] == "no-store"  # (a CDN keeps no refusal)
        # expired: a link made (by this node's key) an hour and more ago
        old, _ = node.media.make_link(image.id, now=time.time() - 2 * node.media.link_ttl)
        status, _, body = await ahttp("GET", alice.media_url + old)
        assert status == 403 and b"expired" in body

        # only members are handed one; unknown ids and non-members look alike
        dave = make_token(node.secret, "dave")
        for who in (dave, "bad.token"):
            status, _, _ = await ahttp("GET", f"{base}/link", who)
            assert status in (401, 404) and (status == 401) == (who == "bad.token")
        assert (await ahttp("GET", f"{alice.media_url}/v1/media/{'0' * 64}/link",
                            bob.token))[0] == 404
        status, headers, body = await ahttp("GET", f"{base}/link", bob.token,
                                            headers={"Accept": "application/json"})
        assert status == 200 and headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"


async def test_a_link_made_on_one_node_works_on_another(node: ChatServer,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """Another node (another MediaService over the same blob store, with the same secret)
    makes the same link; one with another secret makes one this node refuses."""
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(500, 400, seed=52))
    async with connect(node, "alice") as alice, connect(node, "bob") as bob:
        await alice.set_mode("d:alice:bob", chatd_client.Mode.PERMANENT)
        await alice.send_image("bob", str(src))
        image = (await next_message(bob)).media[0]
        twin = MediaService(node.media.blobs, node.secret, str(tmp_path / "t1"))
        path, _ = twin.make_link(image.id)
        status, _, data = await ahttp("GET", alice.media_url + path)
        assert status == 200 and len(data) == image.size
        other = MediaService(node.media.blobs, b"another secret" * 3, str(tmp_path / "t2"))
        path, _ = other.make_link(image.id)
        assert (await ahttp("GET", alice.media_url + path))[0] == 403


@pytest.mark.parametrize("exp", ["", "-1", "1" * 13, "12a", "\u00b2"])
def test_link_checks_refuse_malformed_expiries(tmp_path: Path, exp: str) -> None:
    from chatd.media.blobs import FileBlobStore
    from chatd.media.service import MediaError

    service = MediaService(FileBlobStore(str(tmp_path / "m")), b"k" * 32, str(tmp_path / "t"))
    with pytest.raises(MediaError) as info:
        service.check_link("ab" * 32, exp, "x")
    assert info.value.status == 403

