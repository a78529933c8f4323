"""Test images made with Pillow: a photo with EXIF orientation and GPS, and bad inputs."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def photo(width: int = 3000, height: int = 2000, seed: int = 1, fmt: str = "JPEG") -> bytes:
    """A noisy photo-like image with EXIF: orientation 6 (turn 90 degrees) and a GPS position."""
    rnd = random.Random(seed)
    small = Image.new("RGB", (60, 40))
    small.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
                   for _ in range(60 * 40)])
    img = small.resize((width, height), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    buf = io.BytesIO()
    img.save(buf, fmt, quality=95, exif=exif.tobytes())
    return buf.getvalue()


def png_with_alpha() -> bytes:
    img = Image.new("RGBA", (400, 300), (10, 200, 30, 128))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (its data would be 10 GB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), (80 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()
