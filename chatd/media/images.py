"""Re-encoding uploaded images with Pillow, in child processes the service keeps
(`python -m chatd.media.images`, at nice 10; chatd.media.workers): the decoding, resizing and
encoding never hold the node's GIL or take CPU before the chat does, and a decoder crash on
hostile bytes ends only that child.

What comes in is untrusted bytes; what goes out is a fresh encoding made from the pixels only:
orientation applied, EXIF (GPS), ICC, XMP and comments gone, the longest side capped, plus a
small JPEG preview that travels inline in the message. The type is sniffed from the bytes by
Pillow's decoders, never taken from the client; a decompression bomb, a truncated file or
anything that is not a still image is an ImageError.

The image is encoded straight into a file, never into memory: Pillow encodes into a real file
in one C call that releases the GIL, but into a BytesIO in Python-visible chunks and, for a
progressive JPEG, all the work in the last one, holding the GIL: measured here, a 2560 x 1920
photo kept the event loop's thread from running for 951 ms into a BytesIO, 38 ms into a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
from typing import Any, Final

from PIL import Image, ImageOps

from chatd.protocol.limits import MAX_PREVIEW_SIZE

MAX_SIDE: Final = 2560  # longest side kept
MAX_PIXELS: Final = 50_000_000  # decoding more than this is refused (decompression bombs)
PREVIEW_SIDE: Final = 320
QUALITY: Final = 82
FORMATS: Final = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                  "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff"}


class ImageError(ValueError):
    """The upload is not an image this server takes (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    size: int  # bytes written to the output file
    mime: str
    width: int
    height: int
    preview: bytes


def _preview(img: Image.Image) -> bytes:
    """A JPEG of at most PREVIEW_SIDE px and MAX_PREVIEW_SIZE bytes (smaller until it fits)."""
    side, quality = PREVIEW_SIDE, 60
    while True:
        small = img.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_PREVIEW_SIZE or side <= 16:
            return buf.getvalue()[:MAX_PREVIEW_SIZE]
        if quality > 30:
            quality -= 15
        else:
            side = side * 3 // 4


def reencode(path: str, out: str) -> Encoded:
    """Write the stored form of the image file at path to the file out; ImageError if it is
    not one we take."""
    img: Image.Image
    try:
        with Image.open(path) as img:
            fmt = img.format or ""
            if fmt not in FORMATS:
                raise ImageError(f"not an image type this server takes ({fmt or '?'})")
            if getattr(img, "n_frames", 1) > 1:
                raise ImageError("animated images are not taken")
            if img.width * img.height > MAX_PIXELS:  # (checked from the header, before decoding)
                raise ImageError(f"decompression bomb refused: {img.width}x{img.height} pixels"
                                 f" (at most {MAX_PIXELS:,})")
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:  # (Pillow's own guard, past twice its limit)
        raise ImageError(f"decompression bomb refused: {exc}") from None
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # unknown type, truncated, corrupt
        raise ImageError(f"not a readable image: {exc}") from None
    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if alpha else "RGB")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    with open(out, "wb") as f:
        if alpha:  # keep transparency: WebP; otherwise JPEG, which every client shows
            img.save(f, "WEBP", quality=QUALITY, method=4)
            mime = "image/webp"
        else:
            img.save(f, "JPEG", quality=QUALITY, optimize=True, progressive=True)
            mime = "image/jpeg"
        size = f.tell()
    return Encoded(size, mime, img.width, img.height, _preview(img))


NICE: Final = 10  # the child's CPU priority below the node's
IDLE: Final = 60.0  # seconds a child waits for its next job before it ends


def _one(src: str, dst: str) -> list[object]:
    """[0, size, mime, width, height, preview, sha256 of dst] or [3, why not taken]."""
    try:
        enc = reencode(src, dst)
    except ImageError as exc:
        return [3, str(exc)]
    digest = hashlib.sha256()
    with open(dst, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return [0, enc.size, enc.mime, enc.width, enc.height, enc.preview, digest.digest()]


def serve(inp: Any, out: Any) -> int:
    """Child process (`python -m chatd.media.images`, see chatd.media.workers): read
    [src, dst] requests, each a 4-byte big-endian length and msgpack, answer each the same way
    with what _one says; end at end of input or after IDLE seconds without a job."""
    import select

    import msgpack

    os.nice(NICE)
    while select.select([inp], [], [], IDLE)[0] and len(head := inp.read(4)) == 4:
        src, dst = msgpack.unpackb(inp.read(int.from_bytes(head, "big")))
        answer = msgpack.packb(_one(src, dst))
        out.write(len(answer).to_bytes(4, "big") + answer)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
