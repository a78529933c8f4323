"""One conformance suite for every blob store: the filesystem and S3 (a real SeaweedFS)."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from chatd.media.blobs import (
    BlobStore,
    BlobStoreError,
    FileBlobStore,
    S3BlobStore,
    check_key,
    open_blob_store,
)

from .conftest import S3_KEYS


@pytest.fixture(params=["file", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if request.param == "file":
        store = FileBlobStore(str(tmp_path / "media"))
    else:
        node = request.getfixturevalue("seaweedfs")
        store = S3BlobStore(f"t{secrets.token_hex(6)}", node.endpoint, **S3_KEYS)
    yield store
    await store.aclose()


async def read_all(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in store.get(key, start, end)])


async def test_put_bytes_read_size_delete(blobs: BlobStore) -> None:
    assert await blobs.read("meta/x") is None and await blobs.size("meta/x") is None
    await blobs.put_bytes("meta/x", b"hello")
    assert await blobs.read("meta/x") == b"hello"
    assert await blobs.size("meta/x") == 5
    await blobs.put_bytes("meta/x", b"again")  # overwrite
    assert await blobs.read("meta/x") == b"again"
    await blobs.delete("meta/x")
    await blobs.delete("meta/x")  # twice: no error
    assert await blobs.read("meta/x") is None


async def test_put_file_and_ranges_in_chunks(blobs: BlobStore, tmp_path: Path) -> None:
    data = secrets.token_bytes(700_000)  # several chunks
    src = tmp_path / "src"
    src.write_bytes(data)
    await blobs.put_file("blob/abc", str(src))
    assert await blobs.size("blob/abc") == len(data)
    assert await read_all(blobs, "blob/abc") == data
    assert await read_all(blobs, "blob/abc", 10, 20) == data[10:20]
    assert await read_all(blobs, "blob/abc", 300_000) == data[300_000:]
    assert await read_all(blobs, "blob/abc", 5, 5) == b""


async def test_list_a_prefix(blobs: BlobStore) -> None:
    for conv in ("d:alice:bob", "g:family"):
        await blobs.put_bytes(f"refs/abc/{conv}", b"")
    await blobs.put_bytes("refs/abd/g:other", b"")
    assert await blobs.list("refs/abc/") == ["refs/abc/d:alice:bob", "refs/abc/g:family"]
    assert await blobs.list("refs/zzz/") == []


async def test_put_new_stores_only_once_even_when_raced(blobs: BlobStore) -> None:
    assert await blobs.put_new("used/n1", b"first")
    assert not await blobs.put_new("used/n1", b"second")
    assert await blobs.read("used/n1") == b"first"  # (the first one stays)
    wins: list[int] = []

    async def take(i: int) -> None:
        if await blobs.put_new("used/n2", str(i).encode()):
            wins.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(take, i)
    assert len(wins) == 1 and await blobs.read("used/n2") == str(wins[0]).encode()
    await blobs.delete("used/n2")
    assert await blobs.put_new("used/n2", b"again")  # free again once deleted


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/.b",
                                 "a b", "a/b/"])
async def test_path_tricks_in_keys_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        await blobs.put_bytes(key, b"x")


async def test_files_are_private_and_a_cut_write_is_never_visible(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "media"))
    await store.put_bytes("blob/k", b"x")
    path = tmp_path / "media" / "blob" / "k"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "media").st_mode) == 0o700

    class Cut(Exception):
        pass

    def fill(out: object) -> None:
        out.write(b"half")  # type: ignore[attr-defined]
        raise Cut

    with pytest.raises(Cut):
        store._write("blob/cut", fill)
    assert await store.size("blob/cut") is None
    assert os.listdir(path.parent) == ["k"]  # no temporary file left behind


async def test_s3_down_is_a_blob_store_error() -> None:
    store = S3BlobStore("b", "http://127.0.0.1:9", timeout=1, **S3_KEYS)
    with pytest.raises(BlobStoreError), trio.fail_after(60):
        await store.put_bytes("meta/x", b"x")
    await store.aclose()


def test_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_blob_store("", str(tmp_path)), FileBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}/m", str(tmp_path)), FileBlobStore)
    s3 = open_blob_store("s3://bucket?endpoint=http://127.0.0.1:1", str(tmp_path))
    assert isinstance(s3, S3BlobStore) and s3.bucket == "bucket"
    for bad in ("s3://?endpoint=x", "ftp://x"):
        with pytest.raises(ValueError):
            open_blob_store(bad, str(tmp_path))
