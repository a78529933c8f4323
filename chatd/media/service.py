"""The asset service: upload slots, streamed uploads checked and re-encoded, dedup, who may
download, signed links. No HTTP here (chatd.media.http is the thin web layer over it).

Objects it keeps in its blob store (so several nodes sharing one S3 bucket share all of it):
  blob/<id>          the stored (re-encoded) bytes; id = hex SHA-256 of those bytes
  meta/<id>          the Media reference (msgpack), preview included
  orig/<sha256 hex>  the id an uploaded original became (dedup of the same photo sent again)
  refs/<id>/<hex>    a conversation (its id in hex) that referred to the blob: who may
                     download it; holds [ts ms, sender, recipient devices] (msgpack)
  got/<id>/<hex>/<hash>  in a TEMPORARY chat: that recipient device downloaded it (and
                     got/<id>/<hex>/u<hash>: a device of that user did)
  used/<exp ms>-<nonce hex>  an upload slot taken (created only if absent: once across
                     every node), until the slot expires

Lifetime follows the chat's mode (collect() and downloads): in a TEMPORARY chat the reference
goes once every recipient device known when the message was stored has downloaded the image
(a recipient with no known device counts once any of its devices has), or after max_age
(30 days) whatever the devices did; in a DISAPPEARING chat when the message expires (its ttl);
in a PERMANENT chat it stays. A blob goes with its last reference (dedup: other chats keep it),
or UNSENT_GRACE after its upload if no message ever referred to it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final

import msgpack
import trio
from prometheus_client import Counter, Histogram

from chatd.core import now_ms
from chatd.protocol import frames as F
from chatd.protocol.errors import ProtocolError
from chatd.protocol.schema import from_map, to_map

from .blobs import BlobStore, BlobStoreError
from .images import ImageError
from .workers import Reencoders

log = logging.getLogger("chatd.media")
MAX_UPLOAD: Final = 16 * 1024 * 1024
SLOT_TTL: Final = 300.0  # seconds an upload slot stays valid
LINK_TTL: Final = 3600.0  # seconds a signed download link stays valid (at least)
# images decoded at once per process (CPU and memory bound): a core is left to the chat
REENCODE_JOBS: Final = max(1, (os.cpu_count() or 2) - 1)
UNSENT_GRACE: Final = 3600_000  # ms an uploaded blob waits for a message to refer to it
BLOB_ID = re.compile(r"[0-9a-f]{64}")
TEMPORARY, PERMANENT, DISAPPEARING = 0, 1, 2  # chatd.protocol.frames.Mode

UPLOADS = Counter("chatd_media_uploads", "Images uploaded and stored")
DEDUP_HITS = Counter("chatd_media_dedup_hits", "Upload slots answered 'already here'")
BYTES_STORED = Counter("chatd_media_bytes_stored", "Bytes of new blobs written")
REENCODE_TIME = Histogram("chatd_media_reencode_seconds", "Time to re-encode one image")
BLOB_LATENCY = Histogram("chatd_media_blob_put_seconds", "Time to write one blob")
BLOBS_DELETED = Counter("chatd_media_blobs_deleted", "Blobs deleted as their chats' modes say")
ConvMode = Callable[[str], Awaitable[tuple[int, int]]]
Members = Callable[[str], Awaitable[tuple[str, ...]]]
Devices = Callable[[str], Awaitable[Iterable[str]]]
ANY_DEVICE: Final = ""  # in a reference's devices: a recipient with no device known then


class MediaError(Exception):
    """A media request refused; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hex(text: str) -> str:
    return text.encode().hex()


def _unhex(key: str) -> str:
    """The text hex-encoded in the last part of a key."""
    return bytes.fromhex(key.rsplit("/", 1)[1]).decode()


def _device_key(user: str, device: str) -> str:
    return hashlib.sha256(f"{user}\0{device}".encode()).hexdigest()[:32]


def _user_key(user: str) -> str:
    return "u" + hashlib.sha256(user.encode()).hexdigest()[:32]


class MediaService:
    """`members(conv)`, `conv_mode(conv)` and `devices(user)` (the node's: its store) say, when
    a message refers to a blob, which devices a TEMPORARY chat's image waits for; without them
    it waits for users."""

    def __init__(self, blobs: BlobStore, secret: bytes, tmp_dir: str,
                 max_upload: int = MAX_UPLOAD, slot_ttl: float = SLOT_TTL,
                 jobs: int = REENCODE_JOBS, link_ttl: float = LINK_TTL,
                 members: Members | None = None, conv_mode: ConvMode | None = None,
                 devices: Devices | None = None) -> None:
        self.blobs = blobs
        self._key = hmac.new(secret, b"chatd media slot v1", hashlib.sha256).digest()
        self._link_key = hmac.new(secret, b"chatd media link v1", hashlib.sha256).digest()
        self.tmp_dir = tmp_dir
        os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
        self.max_upload = max_upload
        self.slot_ttl = slot_ttl
        self.link_ttl = link_ttl
        self.jobs = trio.CapacityLimiter(jobs)
        # Pillow in child processes: in a worker thread its decoding and resizing held the
        # GIL for 40-80 ms at a time and took a core the chat needed (bench/media.py)
        self.reencoders = Reencoders(jobs)
        self.members = members
        self.conv_mode = conv_mode
        self.devices = devices

    # ---- slots -----------------------------------------------------------------------------

    def make_slot_token(self, user: str, sha256: bytes, size: int, mime: str,
                        now: float | None = None) -> tuple[str, float]:
        exp = (time.time() if now is None else now) + self.slot_ttl
        payload = msgpack.packb([1, user, sha256, size, mime, exp, secrets.token_bytes(12)])
        sig = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(sig)}", exp

    def check_slot_token(self, token: str, now: float | None = None
                         ) -> tuple[str, bytes, int, str, bytes, float]:
        """(user, sha256, size, mime, nonce, expiry) of a valid, unexpired slot token."""
        try:
            p64, s64 = token.split(".")
            payload, sig = _unb64(p64), _unb64(s64)
        except ValueError:
            raise MediaError(401, "upload token is malformed") from None
        if not hmac.compare_digest(sig, hmac.new(self._key, payload, hashlib.sha256).digest()):
            raise MediaError(401, "bad upload token")
        _v, user, sha, size, mime, exp, nonce = msgpack.unpackb(payload)
        if exp < (time.time() if now is None else now):
            raise MediaError(401, "upload slot expired: ask for a new one")
        return user, sha, size, mime, nonce, exp

    # ---- signed links ----------------------------------------------------------------------

    def _link_sig(self, blob_id: str, exp: int) -> str:
        return _b64(hmac.new(self._link_key, f"{blob_id}.{exp}".encode(),
                             hashlib.sha256).digest())

    def make_link(self, blob_id: str, now: float | None = None) -> tuple[str, int]:
        """(path and query, expiry in unix s) of a link to the blob that needs no token.
        The expiry is rounded up to a quarter of link_ttl, so everyone asking in that window
        gets the same URL (one CDN cache entry)."""
        step = max(1, int(self.link_ttl) // 4)
        exp = -(-int((time.time() if now is None else now) + self.link_ttl) // step) * step
        return f"/v1/media/{blob_id}?exp={exp}&sig={self._link_sig(blob_id, exp)}", exp

    def check_link(self, blob_id: str, exp: str, sig: str, now: float | None = None) -> int:
        """The expiry of a valid link; MediaError(403) saying why otherwise."""
        if not (exp.isascii() and exp.isdigit()) or len(exp) > 12:
            raise MediaError(403, "bad link: exp must be a unix time in seconds")
        if not hmac.compare_digest(sig.encode(), self._link_sig(blob_id, int(exp)).encode()):
            raise MediaError(403, "bad link signature")
        if int(exp) < (time.time() if now is None else now):
            raise MediaError(403, "link expired: ask for a new one")
        return int(exp)

    async def slot(self, user: str, req: F.UploadSlot, url: str) -> F.Slot:
        """The answer to an UploadSlot request: the existing Media, or a slot to upload to."""
        if req.size > self.max_upload:
            raise MediaError(413, f"{req.size} bytes, at most {self.max_upload}")
        if len(req.sha256) != 32:
            raise MediaError(400, "sha256 must be 32 bytes")
        have = await self.lookup(req.sha256)
        if have is not None:
            DEDUP_HITS.inc()
            return F.Slot(rid=req.rid, media=have)
        token, exp = self.make_slot_token(user, req.sha256, req.size, req.mime)
        return F.Slot(rid=req.rid, url=url, token=token, expires=int(exp * 1000))

    async def lookup(self, sha256: bytes) -> F.Media | None:
        """The stored Media for content of this hash (an original uploaded before, or stored
        bytes themselves)."""
        blob_id = sha256.hex()
        media = await self.media(blob_id)
        if media is not None:
            return media
        raw = await self.blobs.read(f"orig/{blob_id}")
        return None if raw is None else await self.media(raw.decode())

    async def media(self, blob_id: str) -> F.Media | None:
        if BLOB_ID.fullmatch(blob_id) is None:
            return None
        raw = await self.blobs.read(f"meta/{blob_id}")
        if raw is None:
            return None
        try:
            return from_map(F.Media, msgpack.unpackb(raw), "meta")  # type: ignore[no-any-return]
        except (ValueError, ProtocolError):
            return None

    # ---- uploads ---------------------------------------------------------------------------

    async def upload(self, token: str, chunks: AsyncIterator[bytes]) -> F.Media:
        """Take an upload's bytes for a slot: streamed to a private temporary file (never
        whole in memory), checked against the slot's size and hash, re-encoded off the event
        loop, stored once by content."""
        _user, sha, size, _mime, nonce, exp = self.check_slot_token(token)
        used = f"used/{int(exp * 1000)}-{nonce.hex()}"  # (once across every node sharing
        if not await self.blobs.put_new(used, b""):  # the blob store; the expiry: for collect)
            raise MediaError(409, "this upload slot was used already: ask for a new one")
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="up-")
        try:
            digest = hashlib.sha256()
            got = 0
            async with trio.wrap_file(os.fdopen(fd, "wb")) as out:
                async for chunk in chunks:
                    got += len(chunk)
                    if got > size:
                        raise MediaError(413, f"more bytes than the {size} declared")
                    digest.update(chunk)
                    await out.write(chunk)
            if got != size:
                raise MediaError(400, f"{got} bytes received, {size} declared")
            if digest.digest() != sha:
                raise MediaError(422, "the bytes do not match the declared SHA-256")
            media = await self._store(tmp, sha)
        except BaseException:
            with trio.move_on_after(10) as scope, contextlib.suppress(BlobStoreError):
                scope.shield = True  # (a failed upload may be tried again)
                await self.blobs.delete(used)
            raise
        finally:
            os.unlink(tmp)
        UPLOADS.inc()
        return media

    async def _store(self, path: str, orig_sha: bytes) -> F.Media:
        out = path + ".out"
        try:
            async with self.jobs:
                started = time.perf_counter()
                enc, stored_sha = await self.reencoders.run(path, out)
                REENCODE_TIME.observe(time.perf_counter() - started)
            blob_id = stored_sha.hex()
            media = await self.media(blob_id)
            if media is None:
                media = F.Media(id=blob_id, mime=enc.mime, size=enc.size, width=enc.width,
                                height=enc.height, sha256=stored_sha, preview=enc.preview)
                started = time.perf_counter()
                await self.blobs.put_file(f"blob/{blob_id}", out)
                BLOB_LATENCY.observe(time.perf_counter() - started)
                BYTES_STORED.inc(enc.size)
                meta = {**to_map(media), "ut": now_ms()}  # (+ upload time)
                await self.blobs.put_bytes(f"meta/{blob_id}", msgpack.packb(meta))
        except ImageError as exc:
            raise MediaError(415, str(exc)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
        await self.blobs.put_bytes(f"orig/{orig_sha.hex()}", blob_id.encode())
        return media

    # ---- references and downloads ----------------------------------------------------------

    async def _recipient_devices(self, conv: str, sender: str) -> list[list[str]]:
        """[user, device] of every recipient device known now ([user, ANY_DEVICE] for a
        recipient with none); [] when the chat is not TEMPORARY or the service cannot tell."""
        if self.members is None or self.conv_mode is None or self.devices is None \
                or (await self.conv_mode(conv))[0] != TEMPORARY:
            return []
        out: list[list[str]] = []
        for user in sorted(set(await self.members(conv)) - {sender}):
            devices = sorted(await self.devices(user))
            out.extend([user, d] for d in devices or [ANY_DEVICE])
        return out

    async def reference(self, blob_id: str, conv: str, sender: str, now_ms: int) -> bool:
        """Record that a message of conv refers to the blob (its members may download it;
        in a TEMPORARY chat, the recipient devices known now are those it waits for).
        False if there is no such blob."""
        if BLOB_ID.fullmatch(blob_id) is None or await self.blobs.size(f"meta/{blob_id}") is None:
            return False
        devices = await self._recipient_devices(conv, sender)
        await self.blobs.put_bytes(f"refs/{blob_id}/{_hex(conv)}",
                                   msgpack.packb([now_ms, sender, devices]))
        return True

    async def _refs(self, blob_id: str) -> list[tuple[str, str]]:
        """(conv, key) of each conversation referring to the blob."""
        return [(_unhex(key), key) for key in await self.blobs.list(f"refs/{blob_id}/")]

    async def downloaded(self, user: str, device: str, blob_id: str, conv_mode: ConvMode,
                         recipients: Members) -> None:
        """The device downloaded the whole blob: in TEMPORARY chats where every recipient
        device now has, the reference goes (and the blob with its last one)."""
        for conv, key in await self._refs(blob_id):
            if (await conv_mode(conv))[0] != TEMPORARY:
                continue
            raw = await self.blobs.read(key)
            if raw is None:
                continue
            ref = msgpack.unpackb(raw)
            sender, devices = ref[1], ref[2] if len(ref) > 2 else []
            if user == sender:
                continue
            got = f"got/{blob_id}/{_hex(conv)}/"  # (one listing tells who has: no reads)
            await self.blobs.put_bytes(got + _device_key(user, device), b"")
            await self.blobs.put_bytes(got + _user_key(user), b"")
            have = {k.rsplit("/", 1)[1] for k in await self.blobs.list(got)}
            if not devices:  # (no device list: the chat was not TEMPORARY then) its users
                devices = [[u, ANY_DEVICE] for u in set(await recipients(conv)) - {sender}]
            if all((_user_key(u) if d == ANY_DEVICE else _device_key(u, d)) in have
                   for u, d in devices):
                await self._drop_ref(blob_id, conv, key)

    async def _drop_ref(self, blob_id: str, conv: str, key: str) -> None:
        await self.blobs.delete(key)
        got = f"got/{blob_id}/{_hex(conv)}/"
        for k in await self.blobs.list(got):
            await self.blobs.delete(k)
        if not await self.blobs.list(f"refs/{blob_id}/"):
            await self._delete_blob(blob_id)

    async def _delete_blob(self, blob_id: str) -> None:
        await self.blobs.delete(f"meta/{blob_id}")  # first: the blob is unknown from now on
        await self.blobs.delete(f"blob/{blob_id}")
        BLOBS_DELETED.inc()

    async def collect(self, now_ms: int, conv_mode: ConvMode, max_age_ms: int) -> int:
        """Drop references the chats' modes say to forget (expired DISAPPEARING messages,
        TEMPORARY ones undownloaded after max_age) and blobs nothing refers to. Returns how
        many blobs went."""
        gone = 0
        for used in await self.blobs.list("used/"):  # upload slots past their expiry
            if int(used[5:].split("-", 1)[0]) < now_ms:
                await self.blobs.delete(used)
        for meta_key in await self.blobs.list("meta/"):
            blob_id = meta_key[5:]
            refs = await self._refs(blob_id)
            if not refs:
                raw = await self.blobs.read(meta_key)
                uploaded = msgpack.unpackb(raw).get("ut", 0) if raw else 0
                if now_ms - uploaded > UNSENT_GRACE:
                    await self._delete_blob(blob_id)
                    gone += 1
                continue
            for conv, key in refs:
                mode, ttl = await conv_mode(conv)
                raw = await self.blobs.read(key)
                if raw is None or mode == PERMANENT:
                    continue
                age = now_ms - msgpack.unpackb(raw)[0]
                if age > (ttl * 1000 if mode == DISAPPEARING else max_age_ms):
                    await self._drop_ref(blob_id, conv, key)
                    gone += await self.blobs.size(meta_key) is None
        return gone

    async def may_download(self, user: str, blob_id: str,
                           member: Callable[[str, str], Awaitable[bool]]) -> F.Media:
        """The Media if user takes part in a conversation that referred to it; the same 404
        for an unknown blob and one the user may not see (no existence oracle)."""
        media = await self.media(blob_id)
        if media is not None:
            for conv, _key in await self._refs(blob_id):
                if await member(user, conv):
                    return media
        raise MediaError(404, "no such media")

    def download(self, blob_id: str, start: int = 0, end: int | None = None
                 ) -> AsyncIterator[bytes]:
        return self.blobs.get(f"blob/{blob_id}", start, end)

    async def aclose(self) -> None:
        await self.reencoders.aclose()
        await self.blobs.aclose()


__all__ = ["BlobStoreError", "MediaError", "MediaService"]
