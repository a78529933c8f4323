"""Image sharing end to end over real sockets and real HTTP: a node with its HTTP listener, the
SDK uploading and downloading, on the filesystem blob store and on SeaweedFS (S3)."""

from __future__ import annotations

import hashlib
import io
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import chatd_client
import chatd_client.media
import msgpack
import pytest
import trio
from PIL import Image

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import frames as F
from chatd.server import ChatServer, Config, serve

from .conftest import S3_KEYS
from .images import GPS_IFD, bomb, photo


@pytest.fixture(params=["file", "s3"])
async def node(request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ChatServer]:
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, http_port=0,
                 data_dir=str(tmp_path / "data"), max_upload=4 * 1024 * 1024)
    if request.param == "s3":
        weed = request.getfixturevalue("seaweedfs")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEYS["access_key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_KEYS["secret_key"])
        cfg.media = f"s3://chatd-{secrets.token_hex(6)}?endpoint={weed.endpoint}"
    load_or_create_secret(cfg.data_dir)
    server: ChatServer = await nursery.start(serve, cfg)
    for user in ("alice", "bob", "carol", "dave"):
        await server.store.add_user(user)
    yield server


def connect(server: ChatServer, user: str) -> Any:
    return chatd_client.connect(f"tcp://127.0.0.1:{server.tcp_port}",
                                make_token(server.secret, user), "phone")


def http(method: str, url: str, token: str = "", data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def ahttp(*args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(lambda: http(*args, **kwargs))


async def eventually(get: Callable[[], Awaitable[Any]], want: Any) -> None:
    """Wait until get() gives want (or its first item does): the server records a download
    just after the last byte went out, so the client may see the end first."""
    with trio.fail_after(10):
        while True:
            got = await get()
            if (got[0] if isinstance(got, tuple) else got) == want:
                return
            await trio.sleep(0.05)


async def next_message(client: Any) -> chatd_client.Message:
    """The next message with a body or media (server-made group events skipped)."""
    with trio.fail_after(20):
        while True:
            m = await client.next_event(chatd_client.Message)
            assert isinstance(m, chatd_client.Message)
            if m.event is None:
                return m


async def test_a_photo_to_an_offline_user_then_again(node: ChatServer, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(photo(3000, 2000))
    async with connect(node, "alice") as alice:
        await alice.set_mode("d:alice:bob", chatd_client.Mode.PERMANENT)
        sent = await alice.send_image("bob", str(src), "look")
        assert sent.conv == "d:alice:bob"
    async with connect(node, "bob") as bob:  # bob was offline: it waited for him
        m = await next_message(bob)
        assert m.text == "look" and len(m.media) == 1
        image = m.media[0]
        assert (image.mime, image.width, image.height) == ("image/jpeg", 1707, 2560)
        assert 160 <= Image.open(io.BytesIO(image.preview)).size[1] <= 320  # shown at once
        out = tmp_path / "got.jpg"
        await bob.download(image, str(out))
        data = out.read_bytes()
        assert len(data) == image.size and hashlib.sha256(data).digest() == image.sha256
        got = Image.open(out)
        assert got.size == (1707, 2560) and not got.getexif().get_ifd(GPS_IFD)
        assert not got.getexif()  # EXIF (GPS) gone
        # The same photo again: the slot says "already here", nothing is uploaded (the SDK
        # compresses it the same way again: the same bytes, the same hash)
        async with connect(node, "alice") as alice:
            small = Path(chatd_client.media.compress(str(src), str(tmp_path)) or "")
            sha = hashlib.sha256(small.read_bytes()).digest()
            slot = await alice.request(lambda r: F.UploadSlot(
                rid=r, sha256=sha, size=small.stat().st_size, mime="image/jpeg"))
            assert isinstance(slot, F.Slot) and slot.media == image and not slot.token
            await alice.send_image("bob", str(src), "again")
        m2 = await next_message(bob)
        assert m2.media == (image,) and m2.text == "again"


async def test_a_group_photo_only_members_download(node: ChatServer, tmp_path: Path) -> None:
    src = tmp_path / "p.png"
    src.write_bytes(photo(640, 480, seed=2, fmt="PNG"))
    async with connect(node, "alice") as alice, connect(node, "carol") as carol:
        await alice.create_group("Fam", ["carol"])
        groups = await alice.my_groups()
        await alice.set_mode(f"g:{groups[0]}", chatd_client.Mode.PERMANENT)
        await alice.send_image(None, str(src), group=groups[0])
        m = await next_message(carol)
        image = m.media[0]
        assert (image.width, image.height) == (480, 640)  # (turned by its EXIF orientation)
        await carol.download(image, str(tmp_path / "c.jpg"))
        url = f"{alice.media_url}/v1/media/{image.id}"
        dave = make_token(node.secret, "dave")
        status, _, _ = await ahttp("GET", url, dave)  # not a member: as if unknown
        assert status == 404
        assert (await ahttp("GET", url[:-64] + "0" * 64, dave))[0] == 404
        assert (await ahttp("GET", url[:-64] + "..%2F..%2Fsecret",
                            make_token(node.secret, "carol")))[0] == 404
        assert (await ahttp("GET", url, "bad.token"))[0] == 401
        assert (await ahttp("GET", url))[0] == 401
        # Range and ETag
        token = make_token(node.secret, "carol")
        status, headers, part = await ahttp("GET", url, token, headers={"Range": "bytes=0-9"})
        assert status == 206 and len(part) == 10
        assert headers["content-range"] == f"bytes 0-9/{image.size}"
        assert headers["etag"] == f'"{image.id}"' and "max-age" in headers["cache-control"]
        status, _, tail = await ahttp("GET", url, token, headers={"Range": "bytes=-5"})
        assert status == 206 and len(tail) == 5
        assert (await ahttp("GET", url, token, headers={"If-None-Match": f'"{image.id}"'}))[0] \
            == 304
        # carol leaves: she may no longer download
        await carol.leave_group(groups[0])
        assert (await ahttp("GET", url, token))[0] == 404


async def test_bad_uploads_get_clear_errors(node: ChatServer, tmp_path: Path) -> None:
    async with connect(node, "alice") as alice:
        async def slot(data: bytes, size: int | None = None) -> F.Slot:
            s = await alice.request(lambda r: F.UploadSlot(
                rid=r, sha256=hashlib.sha256(data).digest(),
                size=len(data) if size is None else size, mime="image/jpeg"))
            assert isinstance(s, F.Slot) and s.token
            return s

        good = photo(300, 200, seed=3)
        s = await slot(good)
        assert (await ahttp("PUT", s.url, "x.y", good))[0] == 401  # wrong token
        assert (await ahttp("PUT", s.url, "", good))[0] == 401  # none
        assert (await ahttp("PUT", s.url, s.token, good[:-1] + b"x"))[0] == 422  # hash
        status, _, body = await ahttp("PUT", s.url, s.token, good)  # (a failed try is retried)
        assert status == 201
        blob_id = msgpack.unpackb(body)["id"]
        assert len(blob_id) == 64
        # uploaded, but no message refers to it yet: nobody may download it
        assert (await ahttp("GET", f"{alice.media_url}/v1/media/{blob_id}", alice.token))[0] \
            == 404
        assert (await ahttp("PUT", s.url, s.token, good))[0] == 409  # slot used twice
        s = await slot(good + b"more")
        assert (await ahttp("PUT", s.url, s.token, good))[0] == 400  # shorter than declared
        other = photo(300, 200, seed=4)
        s = await slot(other)
        assert (await ahttp("PUT", s.url, s.token, other + b"more"))[0] == 413  # longer
        for bad in (b"%PDF-1.4 " + b"x" * 100, bomb()):
            s = await slot(bad)
            status, _, body = await ahttp("PUT", s.url, s.token, bad)
            assert status == 415, body
        with pytest.raises(chatd_client.ChatdError) as info:
            await slot(b"x", size=5 * 1024 * 1024)  # over max_upload
        assert info.value.name == "TOO_LARGE"
        with pytest.raises(chatd_client.ChatdError) as info:  # a reference to nothing uploaded
            await alice.send("bob", "x", media=(F.Media(id="ab" * 32, mime="image/jpeg",
                                                        size=1),))
        assert info.value.name == "INVALID"


async def test_lifetime_follows_the_chat_mode(node: ChatServer, tmp_path: Path) -> None:
    """TEMPORARY: gone once every recipient downloaded it (dedup: not while another chat
    refers to it); DISAPPEARING: gone when the message expires; PERMANENT: kept."""
    media = node.media
    src = tmp_path / "t.jpg"
    src.write_bytes(photo(400, 300, seed=11))
    async with connect(node, "alice") as alice, connect(node, "bob") as bob:
        await alice.set_mode("d:alice:carol", chatd_client.Mode.PERMANENT)
        await alice.send_image("bob", str(src))  # TEMPORARY (the default)
        await alice.send_image("carol", str(src))  # PERMANENT: the same blob
        image = (await next_message(bob)).media[0]
        await bob.download(image, str(tmp_path / "b.jpg"))
        url = f"{alice.media_url}/v1/media/{image.id}"
        bob_token, carol_token = make_token(node.secret, "bob"), make_token(node.secret, "carol")
        await eventually(lambda: ahttp("GET", url, bob_token), 404)  # bob's chat forgot it
        assert (await ahttp("GET", url, carol_token))[0] == 200  # carol's keeps it
        assert await media.blobs.size(f"blob/{image.id}") == image.size
        # the only reference TEMPORARY: gone from the store once bob has downloaded it
        other = tmp_path / "o.jpg"
        other.write_bytes(photo(400, 300, seed=12))
        await alice.send_image("bob", str(other))
        image2 = (await next_message(bob)).media[0]
        await bob.download(image2, str(tmp_path / "b2.jpg"))
        await eventually(lambda: media.media(image2.id), None)
        # (its metadata is deleted first, then the blob: the blob may be a moment later)
        await eventually(lambda: media.blobs.size(f"blob/{image2.id}"), None)
        # DISAPPEARING: the collector drops it once the message expired
        await alice.set_mode("d:alice:bob", chatd_client.Mode.DISAPPEARING, ttl=1)
        third = tmp_path / "d.jpg"
        third.write_bytes(photo(400, 300, seed=13))
        await alice.send_image("bob", str(third))
        image3 = (await next_message(bob)).media[0]
        conv_mode = node.store.conv_mode
        now = int(time.time() * 1000)
        assert await media.collect(now, conv_mode, 10**9) == 0  # not yet expired
        assert await media.collect(now + 2000, conv_mode, 10**9) == 1
        assert await media.blobs.size(f"blob/{image3.id}") is None
        # PERMANENT (carol's chat) survives any collection
        assert await media.collect(now + 10**8, conv_mode, 10**9) == 0
        assert await media.blobs.size(f"blob/{image.id}") == image.size
        assert (await ahttp("GET", url, carol_token))[0] == 200



async def test_an_upload_cut_midway_leaves_nothing(node: ChatServer, tmp_path: Path) -> None:
    data = photo(600, 400, seed=31)
    async with connect(node, "alice") as alice:
        slot = await alice.request(lambda r: F.UploadSlot(
            rid=r, sha256=hashlib.sha256(data).digest(), size=len(data), mime="image/jpeg"))
        assert isinstance(slot, F.Slot) and slot.token
        stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
        await stream.send_all(
            f"PUT /v1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {slot.token}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
        await trio.sleep(0.3)
        await stream.aclose()  # cut off mid-way
        tmp = Path(node.config.data_dir) / "media-tmp"
        with trio.fail_after(10):
            while any(tmp.iterdir()):  # the partial file is removed
                await trio.sleep(0.05)
        # nothing became visible, and the same slot may be tried again in full
        assert await node.media.lookup(hashlib.sha256(data).digest()) is None
        status, _, _ = await ahttp("PUT", slot.url, slot.token, data)
        assert status == 201


def test_an_expired_slot_token_is_refused(tmp_path: Path) -> None:
    from chatd.media.blobs import FileBlobStore
    from chatd.media.service import MediaError, MediaService

    service = MediaService(FileBlobStore(str(tmp_path / "m")), b"k" * 32, str(tmp_path / "t"))
    token, exp = service.make_slot_token("alice", b"\0" * 32, 10, "image/jpeg", now=1000.0)
    assert service.check_slot_token(token, now=exp - 1)[0] == "alice"
    with pytest.raises(MediaError, match="expired") as info:
        service.check_slot_token(token, now=exp + 1)
    assert info.value.status == 401
    other = MediaService(FileBlobStore(str(tmp_path / "m")), b"j" * 32, str(tmp_path / "t"))
    with pytest.raises(MediaError, match="bad upload token"):  # another node's secret
        other.check_slot_token(token, now=exp - 1)


async def test_blob_store_down_is_a_clear_error(tmp_path: Path, nursery: trio.Nursery,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, http_port=0,
                 data_dir=str(tmp_path / "data"), media="s3://b?endpoint=http://127.0.0.1:9")
    load_or_create_secret(cfg.data_dir)
    server: ChatServer = await nursery.start(serve, cfg)
    await server.store.add_user("alice")
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(300, 200, seed=41))
    async with connect(server, "alice") as alice:
        with trio.fail_after(60), pytest.raises(chatd_client.ChatdError) as info:
            await alice.upload_image(str(src))
        assert info.value.name == "INTERNAL" and "media store unavailable" in info.value.message
