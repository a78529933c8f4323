"""Re-encoding: orientation applied, metadata gone, sides capped, preview small; bad images
refused with a clear reason."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import trio
from PIL import Image

from chatd.media.images import MAX_SIDE, ImageError, reencode
from chatd.media.workers import Reencoders
from chatd.protocol.limits import MAX_PREVIEW_SIZE

from .images import GPS_IFD, animated_gif, bomb, photo, png_with_alpha


def test_a_photo_is_turned_stripped_capped_and_previewed(tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(3000, 2000))
    assert Image.open(src).getexif().get_ifd(GPS_IFD)  # (the input has a position)
    enc = reencode(str(src), str(tmp_path / "out"))
    data = (tmp_path / "out").read_bytes()
    assert enc.mime == "image/jpeg" and enc.size == len(data)
    assert (enc.width, enc.height) == (1707, MAX_SIDE)  # turned by its orientation, capped
    out = Image.open(io.BytesIO(data))
    assert out.size == (enc.width, enc.height) and out.format == "JPEG"
    assert not out.getexif() and "exif" not in out.info and "icc_profile" not in out.info
    preview = Image.open(io.BytesIO(enc.preview))
    assert max(preview.size) <= 320 and len(enc.preview) <= MAX_PREVIEW_SIZE
    reencode(str(src), str(tmp_path / "again"))
    assert (tmp_path / "again").read_bytes() == data  # deterministic: the same photo dedups


def test_transparency_is_kept_as_webp(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(png_with_alpha())
    enc = reencode(str(src), str(tmp_path / "out"))
    assert enc.mime == "image/webp" and (enc.width, enc.height) == (400, 300)
    assert Image.open(tmp_path / "out").mode == "RGBA"


@pytest.mark.parametrize(("data", "reason"), [
    (bomb(), "decompression bomb"),
    (bomb(9000), "decompression bomb"),  # under Pillow's own limit, over ours
    (animated_gif(), "animated"),
    (b"%PDF-1.4 not an image", "not a readable image"),
    (photo(200, 100)[:3000], "not a readable image"),  # truncated
    (b"", "not a readable image"),
], ids=["bomb", "bomb-under-pillow-limit", "animated", "pdf", "truncated", "empty"])
def test_bad_images_are_refused_with_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    src = tmp_path / "x"
    src.write_bytes(data)
    with pytest.raises(ImageError, match=reason):
        reencode(str(src), str(tmp_path / "out"))


async def test_reencoding_children_are_kept_and_replaced(tmp_path: Path) -> None:
    """One child serves job after job; one that ended while idle, died in a job, or whose job
    was cancelled is not used again (the job it died in is refused, the next one works)."""
    pool = Reencoders(1)
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(300, 200, seed=81))
    try:
        enc, sha = await pool.run(str(src), str(tmp_path / "o1"))
        assert hashlib.sha256((tmp_path / "o1").read_bytes()).digest() == sha
        assert enc.mime == "image/jpeg" and (enc.width, enc.height) == (200, 300)
        [child] = pool._idle
        assert (await pool.run(str(src), str(tmp_path / "o2")))[1] == sha
        assert pool._idle == [child]  # the same child again
        child.kill()
        await child.wait()  # ended while idle: a fresh one takes the job
        assert (await pool.run(str(src), str(tmp_path / "o3")))[1] == sha
        [child] = pool._idle
        refused: list[str] = []

        async def job(out: str) -> None:
            try:
                await pool.run(str(src), out)
            except ImageError as exc:
                refused.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, str(tmp_path / "o4"))
            await trio.sleep(0)  # (the job is sent: the child dies in it)
            child.kill()
        assert refused == ["not a readable image (the decoder failed)"]
        assert pool._idle == []
        with trio.CancelScope() as scope:  # a job cancelled half-way: its child is ended
            async with trio.open_nursery() as nursery:
                nursery.start_soon(job, str(tmp_path / "o5"))
                await trio.sleep(0)
                scope.cancel()
        assert pool._idle == []
        with pytest.raises(ImageError, match="not a readable image"):  # refused, not a crash
            await pool.run(str(tmp_path / "missing"), str(tmp_path / "o6"))
        assert (await pool.run(str(src), str(tmp_path / "o7")))[1] == sha
    finally:
        await pool.aclose()
