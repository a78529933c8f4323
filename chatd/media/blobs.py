"""Blob stores: where media bytes live. A small interface with two backends, both tested by
one conformance suite (tests/media/test_blobstore.py):

- `file:///path` (default: <data_dir>/media): files 0600 in 0700 directories, each written to a
  temporary file and renamed into place, so a cut upload never becomes visible;
- `s3://bucket?endpoint=http://host:port&region=...`: any S3-compatible object store (tested
  against SeaweedFS). Credentials come from the usual AWS environment variables or files.
  botocore is blocking: each call runs in a worker thread.

Guarantees: `put` is atomic (readers see the whole object or none); `put_new` stores only if
the key is free, atomically across every node sharing the store (the file store links a
finished temporary file into place, which fails if the name exists; S3 sends
`If-None-Match: *`, which SeaweedFS checks under its per-object write lock, as AWS S3 does);
`get` reads a byte range in chunks (never the whole object in memory); keys are plain relative
paths checked by `check_key` (no `..`, no leading `/`). Every backend failure is a BlobStoreError.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from chatd import need

CHUNK = 256 * 1024
KEY = re.compile(r"[A-Za-z0-9_\-]+(?:[/:.][A-Za-z0-9_\-]+)*")


class BlobStoreError(Exception):
    """The blob store failed (unreachable, refused): the request may be retried."""


class _Taken(Exception):
    """A conditional S3 put found the key taken."""


def check_key(key: str) -> str:
    if len(key) > 512 or KEY.fullmatch(key) is None:
        raise ValueError(f"bad blob key {key[:60]!r}")
    return key


class BlobStore(Protocol):
    async def put_file(self, key: str, path: str) -> None:
        """Store the file's bytes under key, atomically."""

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store small bytes under key, atomically."""

    async def put_new(self, key: str, data: bytes) -> bool:
        """Store small bytes under key only if nothing is there yet: True if stored, False
        if the key was taken (by any node sharing the store)."""

    async def size(self, key: str) -> int | None:
        """The object's size, None if there is none."""

    async def read(self, key: str) -> bytes | None:
        """A small object's bytes, None if there is none."""

    def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Chunks of bytes start..end (exclusive) of the object."""

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with prefix (a directory-like prefix ending in '/')."""

    async def delete(self, key: str) -> None:
        """Forget key (no error if it is not there)."""

    async def aclose(self) -> None: ...


class FileBlobStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _write(self, key: str, fill: Any, new: bool = False) -> bool:
        path = self._path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")  # (mkstemp: 0600)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            if not new:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # (fails if the name exists, atomically)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def put_file(self, key: str, path: str) -> None:
        def fill(out: Any) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)

        await self._run(self._write, key, fill)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._run(self._write, key, lambda out: out.write(data))

    async def put_new(self, key: str, data: bytes) -> bool:
        stored: bool = await self._run(self._write, key, lambda out: out.write(data), True)
        return stored

    async def size(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    async def read(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                with open(self._path(key), "rb") as f:
                    data: bytes = f.read()
                    return data
            except FileNotFoundError:
                return None

        data: bytes | None = await self._run(read)
        return data

    async def get(self, key: str, start: int = 0, end: int | None = None
                  ) -> AsyncIterator[bytes]:
        try:
            f = await trio.open_file(self._path(key), "rb")
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc}") from None
        async with f:
            await f.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = await f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(prefix + n for n in names if not n.startswith(".part-"))

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    async def aclose(self) -> None:
        pass

    @staticmethod
    async def _run(fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            raise BlobStoreError(str(exc)) from exc


class S3BlobStore:
    """An S3 bucket through botocore, each call in a worker thread (at most `threads` at
    once). The bucket is made on first use if it is missing."""

    def __init__(self, bucket: str, endpoint: str | None = None, region: str = "us-east-1",
                 access_key: str | None = None, secret_key: str | None = None,
                 threads: int = 16, timeout: float = 10.0) -> None:
        need("s3")
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.limiter = trio.CapacityLimiter(threads)
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, config=BotoConfig(
                connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3},
                max_pool_connections=threads, s3={"addressing_style": "path"}))
        self._bucket_ready = False

    async def _call(self, name: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        fn = getattr(self.client, name)
        try:
            return await trio.to_thread.run_sync(
                lambda: fn(**kwargs), limiter=self.limiter, abandon_on_cancel=True)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(kwargs.get("Key")) from None
            if code in ("412", "PreconditionFailed", "ConditionalRequestConflict"):
                raise _Taken(kwargs.get("Key")) from None  # (a conditional put lost)
            raise BlobStoreError(f"S3 {name}: {exc}") from None
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 {name}: {exc}") from None

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            await self._call("head_bucket", Bucket=self.bucket)
        except (KeyError, BlobStoreError):
            with contextlib.suppress(BlobStoreError):  # (made meanwhile by another node)
                await self._call("create_bucket", Bucket=self.bucket)
            await self._call("head_bucket", Bucket=self.bucket)
        self._bucket_ready = True

    async def put_file(self, key: str, path: str) -> None:
        await self._ensure_bucket()

        def upload() -> None:
            with open(path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=check_key(key), Body=f)

        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await trio.to_thread.run_sync(upload, limiter=self.limiter)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise BlobStoreError(f"S3 put: {exc}") from None

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._ensure_bucket()
        await self._call("put_object", Bucket=self.bucket, Key=check_key(key), Body=data)

    async def put_new(self, key: str, data: bytes) -> bool:
        await self._ensure_bucket()
        try:
            await self._call("put_object", Bucket=self.bucket, Key=check_key(key), Body=data,
                             IfNoneMatch="*")
        except _Taken:
            return False
        return True

    async def size(self, key: str) -> int | None:
        await self._ensure_bucket()
        try:
            head = await self._call("head_object", Bucket=self.bucket, Key=check_key(key))
        except KeyError:
            return None
        return int(head["ContentLength"])

    async def read(self, key: str) -> bytes | None:
        await self._ensure_bucket()
        try:
            obj = await self._call("get_object", Bucket=self.bucket, Key=check_key(key))
        except KeyError:
            return None
        body = obj["Body"]
        try:
            return await trio.to_thread.run_sync(body.read, limiter=self.limiter)
        finally:
            body.close()

    async def get(self, key: str, start: int = 0, end: int | None = None
                  ) -> AsyncIterator[bytes]:
        await self._ensure_bucket()
        if end is not None and end <= start:
            return
        rng = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            obj = await self._call("get_object", Bucket=self.bucket, Key=check_key(key),
                                   Range=rng)
        except KeyError:
            raise BlobStoreError(f"no object {key}") from None
        body = obj["Body"]
        try:
            while True:
                try:
                    chunk = await trio.to_thread.run_sync(body.read, CHUNK,
                                                          limiter=self.limiter)
                except Exception as exc:
                    raise BlobStoreError(f"S3 read: {exc}") from None
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def list(self, prefix: str) -> list[str]:
        await self._ensure_bucket()
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = await self._call("list_objects_v2", Bucket=self.bucket, Prefix=prefix,
                                    **token)
            keys.extend(o["Key"] for o in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def delete(self, key: str) -> None:
        await self._ensure_bucket()
        with contextlib.suppress(KeyError):
            await self._call("delete_object", Bucket=self.bucket, Key=check_key(key))

    async def aclose(self) -> None:
        self.client.close()


def open_blob_store(url: str, data_dir: str) -> BlobStore:
    """A blob store from its URL; "" is the filesystem under the data dir."""
    if not url:
        return FileBlobStore(os.path.join(data_dir, "media"))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return FileBlobStore(parts.path)
    if parts.scheme == "s3":
        q = dict(urllib.parse.parse_qsl(parts.query))
        if not parts.netloc:
            raise ValueError("s3:// needs a bucket: s3://bucket?endpoint=http://host:port")
        return S3BlobStore(parts.netloc, q.get("endpoint"), q.get("region", "us-east-1"))
    raise ValueError(f"unknown media store {url!r}: use file:///path or s3://bucket")
