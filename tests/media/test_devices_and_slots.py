"""TEMPORARY chats wait for every recipient device known when the message was stored (not
for every user), never longer than the 30-day expiry; an upload slot is used once across
every node sharing the blob store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import chatd_client
import pytest
import trio

from chatd.auth import make_token
from chatd.media.service import MediaError, MediaService
from chatd.server import ChatServer

from .images import photo
from .test_e2e import ahttp, connect, eventually, next_message, node  # noqa: F401


async def test_temporary_waits_for_each_of_bobs_devices(node: ChatServer,  # noqa: F811
                                                        tmp_path: Path) -> None:
    media = node.media
    src = tmp_path / "t.jpg"
    src.write_bytes(photo(400, 300, seed=71))
    async with connect(node, "alice") as alice, connect(node, "bob") as phone, \
            chatd_client.connect(f"tcp://127.0.0.1:{node.tcp_port}",
                                 make_token(node.secret, "bob"), "laptop") as laptop:
        await alice.send_image("bob", str(src))  # TEMPORARY (the default)
        image = (await next_message(phone)).media[0]
        assert (await next_message(laptop)).media == (image,)
        await phone.download(image, str(tmp_path / "phone.jpg"))
        await trio.sleep(0.5)  # (the server notes a download just after its last byte)
        assert await media.media(image.id) is not None  # the laptop has not downloaded it
        await laptop.download(image, str(tmp_path / "laptop.jpg"))
        await eventually(lambda: media.media(image.id), None)  # now every device has
        await eventually(lambda: media.blobs.size(f"blob/{image.id}"), None)
        url = f"{alice.media_url}/v1/media/{image.id}"
        assert (await ahttp("GET", url, phone.token))[0] == 404


async def test_a_device_that_never_downloads_keeps_it_only_until_expiry(
        node: ChatServer, tmp_path: Path) -> None:  # noqa: F811
    """bob's laptop signed in once and never comes back: the phone's download is not enough,
    and the collector still drops the image after the TEMPORARY maximum age. carol never
    signed in at all: any one of her devices will do."""
    media = node.media
    src = tmp_path / "t.jpg"
    src.write_bytes(photo(400, 300, seed=72))
    async with chatd_client.connect(f"tcp://127.0.0.1:{node.tcp_port}",
                                    make_token(node.secret, "bob"), "laptop"):
        pass
    async with connect(node, "alice") as alice, connect(node, "bob") as phone:
        await alice.send_image("bob", str(src))
        image = (await next_message(phone)).media[0]
        await phone.download(image, str(tmp_path / "phone.jpg"))
        await trio.sleep(0.5)
        assert await media.media(image.id) is not None
        conv_mode = node.store.conv_mode
        max_age = int(node.config.temporary_max_age * 1000)
        now = int(time.time() * 1000)
        assert await media.collect(now, conv_mode, max_age) == 0
        assert await media.collect(now + max_age + 1000, conv_mode, max_age) == 1
        assert await media.media(image.id) is None

        other = tmp_path / "c.jpg"
        other.write_bytes(photo(400, 300, seed=73))
        await alice.send_image("carol", str(other))
        async with connect(node, "carol") as carol:  # (her first device, after the send)
            image2 = (await next_message(carol)).media[0]
            await carol.download(image2, str(tmp_path / "carol.jpg"))
            await eventually(lambda: media.media(image2.id), None)


@pytest.fixture(params=["file", "s3"])
async def twin_services(request: pytest.FixtureRequest, tmp_path: Path
                        ) -> AsyncIterator[tuple[MediaService, MediaService]]:
    """Two nodes' media services over one blob store, with one secret."""
    import secrets

    from chatd.media.blobs import BlobStore, FileBlobStore, S3BlobStore

    from .conftest import S3_KEYS

    def store() -> BlobStore:
        if request.param == "file":
            return FileBlobStore(str(tmp_path / "shared"))
        weed = request.getfixturevalue("seaweedfs")
        return S3BlobStore(bucket, weed.endpoint, **S3_KEYS)

    bucket = f"twin-{secrets.token_hex(6)}"
    a = MediaService(store(), b"s" * 32, str(tmp_path / "a"))
    b = MediaService(store(), b"s" * 32, str(tmp_path / "b"))
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_slot_is_used_once_across_nodes(
        twin_services: tuple[MediaService, MediaService]) -> None:
    a, b = twin_services
    data = photo(400, 300, seed=74)
    token, exp = a.make_slot_token("alice", hashlib.sha256(data).digest(), len(data),
                                   "image/jpeg")

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
            await trio.sleep(0)

    results: list[int] = []

    async def put(service: MediaService) -> None:
        try:
            await service.upload(token, body())
            results.append(201)
        except MediaError as exc:
            results.append(exc.status)

    async with trio.open_nursery() as nursery:  # the same slot on both nodes at once
        nursery.start_soon(put, a)
        nursery.start_soon(put, b)
    assert sorted(results) == [201, 409]
    for service in (a, b):  # and later, on either
        with pytest.raises(MediaError) as info:
            await service.upload(token, body())
        assert info.value.status == 409
    # the mark goes with the slot's expiry
    now = int(time.time() * 1000)
    assert await a.blobs.list("used/")
    await a.collect(now, _temporary, 10**9)
    assert await a.blobs.list("used/")  # not yet expired
    await a.collect(int(exp * 1000) + 1, _temporary, 10**9)
    assert await a.blobs.list("used/") == []


async def _temporary(conv: str) -> tuple[int, int]:
    return 0, 0
