"""Images over HTTPS: the HTTP listener takes the node's TLS certificate."""

from __future__ import annotations

from pathlib import Path

import chatd_client
import pytest
import trio
import trustme

from chatd.auth import load_or_create_secret, make_token
from chatd.server import Config, serve

from .images import photo


async def test_upload_and_download_over_https(tmp_path: Path, nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (str(tmp_path / n) for n in ("ca.pem", "c.pem", "k.pem"))
    ca.cert_pem.write_to_path(ca_file)
    cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, http_port=0, tls_cert=cert_file,
                 tls_key=key_file, data_dir=str(tmp_path / "data"))
    load_or_create_secret(cfg.data_dir)
    server = await nursery.start(serve, cfg)
    for user in ("alice", "bob"):
        await server.store.add_user(user)
    src = tmp_path / "p.jpg"
    src.write_bytes(photo(500, 400, seed=21))
    url = f"tls://127.0.0.1:{server.tcp_port}"
    async with chatd_client.connect(url, make_token(server.secret, "alice"),
                                    ca_file=ca_file) as alice, \
            chatd_client.connect(url, make_token(server.secret, "bob"),
                                 ca_file=ca_file) as bob:
        assert alice.media_url.startswith("https://127.0.0.1:")
        await alice.send_image("bob", str(src))
        with trio.fail_after(20):
            m = await bob.next_event(chatd_client.Message)
        assert isinstance(m, chatd_client.Message)
        await bob.download(m.media[0], str(tmp_path / "got.jpg"))
        assert (tmp_path / "got.jpg").stat().st_size == m.media[0].size
        # without the CA the client refuses the node's certificate
        bob.ca_file = None
        with pytest.raises(chatd_client.MediaError) as info:
            await bob.download(m.media[0], str(tmp_path / "again.jpg"))
        assert info.value.status == 0 and "CERTIFICATE" in info.value.message.upper()
