"""`chatd send --image` and `chatd listen --save-media` as real processes against a node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from PIL import Image

from chatd.auth import load_or_create_secret, make_token
from chatd.server import Config, serve

from .images import GPS_IFD, photo


async def chatd(*args: str) -> str:
    done = await trio.run_process([sys.executable, "-m", "chatd", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_send_an_image_and_save_it_on_arrival(tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, http_port=0,
                 data_dir=str(tmp_path / "data"))
    load_or_create_secret(cfg.data_dir)
    server = await nursery.start(serve, cfg)
    await server.store.add_user("alice")
    await server.store.add_user("bob")
    url = f"tcp://127.0.0.1:{server.tcp_port}"
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(800, 600, seed=7))
    with trio.fail_after(60):
        sent = json.loads(await chatd("send", "--url", url, "--token",
                                      make_token(server.secret, "alice"), "--to", "bob",
                                      "--image", str(src), "a caption"))
        assert sent["conv"] == "d:alice:bob"
        out = await chatd("listen", "--url", url, "--token", make_token(server.secret, "bob"),
                          "--count", "1", "--save-media", str(tmp_path / "saved"))
    got = json.loads(out.splitlines()[-1])
    assert got["text"] == "a caption" and got["media"][0]["w"] == 600  # (turned upright)
    saved = Path(got["media"][0]["path"])
    assert saved.parent == tmp_path / "saved"
    img = Image.open(saved)
    assert img.size == (600, 800) and not img.getexif().get_ifd(GPS_IFD)
