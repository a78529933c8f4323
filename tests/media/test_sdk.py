"""The SDK compresses an image before uploading it when Pillow is there (turned, metadata
gone, longest side capped) and uploads the file's own bytes when not; the hash it declares is
always that of the bytes it uploads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import chatd_client
import chatd_client.media
import pytest
from PIL import Image

from chatd.server import ChatServer

from .images import GPS_IFD, photo, png_with_alpha
from .test_e2e import connect, next_message, node  # noqa: F401 (node: a fixture)


def test_compress_turns_strips_and_caps(tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(4000, 3000, seed=61))
    out = chatd_client.media.compress(str(src), str(tmp_path))
    assert out is not None
    small = Image.open(out)
    assert small.format == "JPEG" and small.size == (1920, 2560)  # turned, capped
    assert not small.getexif() and not small.getexif().get_ifd(GPS_IFD)  # no EXIF, no GPS
    assert Path(out).stat().st_size < src.stat().st_size
    again = chatd_client.media.compress(str(src), str(tmp_path))
    assert again is not None and Path(again).read_bytes() == Path(out).read_bytes()  # (dedup)
    alpha = tmp_path / "a.png"
    alpha.write_bytes(png_with_alpha())
    out = chatd_client.media.compress(str(alpha), str(tmp_path))
    assert out is not None and Image.open(out).format == "WEBP"


def test_what_pillow_cannot_read_or_lacks_is_uploaded_as_it_is(tmp_path: Path) -> None:
    odd = tmp_path / "x.jpg"
    odd.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert chatd_client.media.compress(str(odd), str(tmp_path)) is None
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(300, 200, seed=62))
    code = ("import sys; sys.modules['PIL'] = None\n"  # (import PIL fails, as without Pillow)
            "from chatd_client.media import compress\n"
            f"print(compress({str(src)!r}, {str(tmp_path)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "None"


@pytest.mark.parametrize("pillow", [True, False], ids=["pillow", "no-pillow"])
async def test_send_image_uploads_what_it_hashed(node: ChatServer, tmp_path: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 pillow: bool) -> None:
    if not pillow:
        monkeypatch.setattr(chatd_client.media, "_pillow", lambda: None)
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(3000, 2000, seed=63))
    raw_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    async with connect(node, "alice") as alice, connect(node, "bob") as bob:
        await alice.send_image("bob", str(src), "hi")
        image = (await next_message(bob)).media[0]
    origs = await node.media.blobs.list("orig/")
    assert len(origs) == 1  # the upload was accepted: its bytes had the declared hash
    assert (origs[0] == f"orig/{raw_sha}") == (not pillow)  # what was uploaded
    assert (image.width, image.height) == (1707, 2560)
    if pillow:
        small = chatd_client.media.compress(str(src), str(tmp_path))
        assert small is not None
        assert origs[0] == f"orig/{hashlib.sha256(Path(small).read_bytes()).hexdigest()}"
