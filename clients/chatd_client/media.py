"""Images over the node's HTTP listener: upload slots, PUT, GET (the standard library's
blocking HTTP client, each call in a worker thread; files are streamed, never read whole).

Before an upload the image is compressed here when Pillow is importable (`compress`): turned
by its EXIF orientation, metadata (EXIF, GPS, ICC, XMP, comments) dropped, the longest side
capped at MAX_SIDE, saved as JPEG (WebP when it has transparency) at QUALITY. Without Pillow,
or for what Pillow cannot read as a still image, the file's own bytes are uploaded (the server
re-encodes either way). The SHA-256 the slot asks with is that of the bytes uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgpack
import trio

from chatd.protocol import frames as F
from chatd.protocol.schema import from_map

CHUNK = 256 * 1024
MAX_SIDE = 2560  # as the server keeps: a bigger photo would only be shrunk there
QUALITY = 85  # (the server re-encodes at 82: a little above it, so little is lost twice)
SNIFF = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"GIF8": "image/gif",
         b"RIFF": "image/webp"}


class MediaError(Exception):
    """An upload or download failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def file_facts(path: str) -> tuple[bytes, int, str]:
    """(SHA-256, size, MIME type guessed from the first bytes or the name) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(0)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    mime = next((m for magic, m in SNIFF.items() if head.startswith(magic)), None)
    mime = mime or mimetypes.guess_type(path)[0] or "application/octet-stream"
    return digest.digest(), size, mime


def _pillow() -> Any:
    """PIL.Image and PIL.ImageOps, or None when Pillow is not installed."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    return Image, ImageOps


def compress(path: str, folder: str) -> str | None:
    """A compressed copy of the image at path, written in folder; None (upload the file as
    it is) without Pillow or for anything Pillow cannot read as a still image."""
    pil = _pillow()
    if pil is None:
        return None
    Image, ImageOps = pil
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                return None
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if alpha else "RGB")  # (a fresh image: no metadata comes along)
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    fd, out = tempfile.mkstemp(dir=folder, suffix=".webp" if alpha else ".jpg")
    with os.fdopen(fd, "wb") as f:
        if alpha:
            img.save(f, "WEBP", quality=QUALITY, method=4)
        else:
            img.save(f, "JPEG", quality=QUALITY, optimize=True)
    return out


def fix_host(url: str, chat_url: str) -> str:
    """A media URL whose host is a wildcard address (a node listening on 0.0.0.0) gets the
    host the client reached the node at."""
    u = urllib.parse.urlsplit(url)
    if u.hostname in ("0.0.0.0", "::", None):
        host = urllib.parse.urlsplit(chat_url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        u = u._replace(netloc=f"{host}:{u.port}" if u.port else host)
    return urllib.parse.urlunsplit(u)


def _context(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    return ssl.create_default_context(cafile=ca_file)


def _open(req: urllib.request.Request, ca_file: str | None, timeout: float) -> Any:
    try:
        return urllib.request.urlopen(req, timeout=timeout,
                                      context=_context(req.full_url, ca_file))
    except urllib.error.HTTPError as exc:
        raise MediaError(exc.code, exc.read(1024).decode("utf-8", "replace").strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise MediaError(0, f"cannot reach {req.full_url}: {exc}") from None


def put_file(url: str, token: str, path: str, size: int, mime: str, ca_file: str | None,
             timeout: float = 120) -> F.Media:
    with open(path, "rb") as f:
        req = urllib.request.Request(url, data=f, method="PUT", headers={
            "Authorization": f"Bearer {token}", "Content-Length": str(size),
            "Content-Type": mime})
        with _open(req, ca_file, timeout) as resp:
            answer = resp.read(1024 * 1024)
    return from_map(F.Media, msgpack.unpackb(answer), "media")  # type: ignore[no-any-return]


def get_file(url: str, token: str, path: str, sha256: bytes, ca_file: str | None,
             timeout: float = 120, device: str = "default") -> None:
    """Download to path: written to a temporary file beside it, checked, then renamed."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                               "X-Chatd-Device": device})
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".chatd-")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, _open(req, ca_file, timeout) as resp:
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.digest() != sha256:
            raise MediaError(0, "downloaded bytes do not match the media's SHA-256")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def upload(client: Any, path: str, compress_first: bool = True) -> F.Media:
    """The Media reference for the image file at path (compressed first when Pillow is
    there): 'already here' if the server has it (nothing is uploaded), otherwise uploaded
    to the slot the server gives."""
    with tempfile.TemporaryDirectory(prefix="chatd-") as folder:
        small = await trio.to_thread.run_sync(compress, path, folder) if compress_first \
            else None
        return await _upload(client, small or path)


async def _upload(client: Any, path: str) -> F.Media:
    sha, size, mime = await trio.to_thread.run_sync(file_facts, path)
    slot = await client.request(lambda rid: F.UploadSlot(rid=rid, sha256=sha, size=size,
                                                          mime=mime))
    assert isinstance(slot, F.Slot), slot
    if slot.media is not None:
        return slot.media
    return await trio.to_thread.run_sync(put_file, fix_host(slot.url, client.url), slot.token,
                                         path, size, mime, client.ca_file)


async def download(client: Any, media: F.Media, path: str) -> str:
    if not client.media_url:
        raise MediaError(0, "this server serves no media (no media_url in Welcome)")
    url = fix_host(f"{client.media_url}/v1/media/{urllib.parse.quote(media.id)}", client.url)
    await trio.to_thread.run_sync(get_file, url, client.token, path, media.sha256,
                                  client.ca_file, 120, client.device)
    return path


def get_link(url: str, token: str, ca_file: str | None, device: str) -> tuple[str, int]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                               "X-Chatd-Device": device})
    with _open(req, ca_file, 30) as resp:
        answer = msgpack.unpackb(resp.read(64 * 1024))
    return answer["url"], answer["exp"]


async def link(client: Any, media: F.Media) -> tuple[str, int]:
    """(URL, expiry in unix s) of a signed link to the image that needs no token (for a
    browser, another program or a CDN in front of the node), valid until that expiry."""
    if not client.media_url:
        raise MediaError(0, "this server serves no media (no media_url in Welcome)")
    base = fix_host(client.media_url, client.url)
    path, exp = await trio.to_thread.run_sync(
        get_link, f"{base}/v1/media/{urllib.parse.quote(media.id)}/link", client.token,
        client.ca_file, client.device)
    return base + path, exp
