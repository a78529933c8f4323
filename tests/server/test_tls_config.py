"""TLS on both listeners with a certificate the test makes; configuration precedence."""

from __future__ import annotations

from pathlib import Path

import chatd_client as cc
import pytest
import trio
import trustme

from chatd.server import Config, ConfigError, load_config

from .conftest import StartNode


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return {k: str(v) for k, v in paths.items()}


async def test_tls_and_wss(start_node: StartNode, certs: dict[str, str]) -> None:
    node = await start_node(tls_cert=certs["cert"], tls_key=certs["key"])
    await node.add_users("alice", "bob")
    tls = f"tls://127.0.0.1:{node.server.tcp_port}"
    wss = f"wss://127.0.0.1:{node.server.ws_port}/ws"
    async with node.connect("alice", url=tls, ca_file=certs["ca"]) as alice, \
            node.connect("bob", url=wss, ca_file=certs["ca"]) as bob:
        await bob.next_event(cc.Synced)
        await alice.send("bob", "over tls")
        with trio.fail_after(5):
            m = await bob.next_event(cc.Message)
        assert isinstance(m, cc.Message) and m.text == "over tls"
    # without the CA the client refuses the server's certificate
    with pytest.raises(cc.ConnectionLost):
        async with node.connect("alice", url=tls, reconnect=False):
            pass


def test_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "chatd.toml"
    toml.write_text('[server]\ntcp_port = 9001\nws_port = 9002\nheartbeat = 10\n')
    cfg = load_config(str(toml), {"ws_port": 9102, "host": None},
                      {"CHATD_HEARTBEAT": "20", "CHATD_WS_PORT": "9202", "HOME": "/x"})
    assert (cfg.tcp_port, cfg.ws_port, cfg.heartbeat, cfg.host) == (9001, 9102, 20.0,
                                                                    Config().host)
    assert cfg.store_url.startswith("sqlite:///") and cfg.store_url.endswith("chatd.db")


@pytest.mark.parametrize("text, problem", [
    ("[server]\ntcp_prot = 1\n", "unknown setting"),
    ("[server]\ntcp_port = 'x'\n", "must be int"),
    ("[server\n", "config file"),
    ("[server]\ntls_cert = 'a.pem'\n", "go together"),
])
def test_bad_config_is_explained(tmp_path: Path, text: str, problem: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(str(toml), {}, {})


def test_the_default_worker_count_follows_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process on SQLite (a second one only takes turns on the file's write lock:
    docs/BENCHMARKS.md), one per core on a store that runs elsewhere; a count given wins."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert Config().processes == 1  # (the default store: SQLite in data_dir)
    assert Config(store="sqlite:///tmp/x.db").processes == 1
    assert Config(store="memory://").processes == 1
    assert Config(store="cassandra://127.0.0.1:9042/chatd").processes == 4
    assert Config(store="sqlite:///tmp/x.db", workers=3).processes == 3
