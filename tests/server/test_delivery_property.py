"""Random histories over real sockets: sends, devices coming and going, partial reads and
acks. However it goes, every device of the recipient ends with every message exactly once
(after de-duplication by inbox position, as clients do) and in order: the i-th message alice
wrote has seq i, everywhere."""

from __future__ import annotations

import tempfile
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.auth import make_token
from chatd.protocol import frames as F
from chatd.server import Config, serve

from .raw import Raw

DEVICES = ["phone", "laptop"]
device = st.sampled_from(DEVICES)
steps = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(1, 5)),  # alice sends a burst
    st.tuples(st.just("connect"), device),
    st.tuples(st.just("disconnect"), device),
    st.tuples(st.just("read"), device, st.floats(0, 1)),  # read what came, ack a part
), max_size=25)


class Device:
    def __init__(self) -> None:
        self.raw: Raw | None = None
        self.max_q = 0
        self.got: list[tuple[int, str, bytes]] = []  # (seq, id, body) shown, in order


async def run(program: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(tcp_port=0, ws_port=-1, data_dir=tmp, store="memory://")
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, cfg)
            port = server.tcp_port
            await server.store.add_user("bob")
            for name in DEVICES:  # register both devices before anything is sent
                r = await Raw.open(port)
                await r.hello(make_token(server.secret, "bob"), name)
                await r.aclose()
            alice = await Raw.open(port)
            await alice.hello(make_token(server.secret, "alice"))
            devices = {d: Device() for d in DEVICES}
            sent = 0

            async def read(dev: Device, fraction: float, timeout: float) -> None:
                """Take what arrives within timeout; ack the first part of it."""
                assert dev.raw is not None
                qs: list[int] = []
                with trio.move_on_after(timeout):
                    while True:
                        f = await dev.raw.recv(timeout=60)
                        assert f is not None
                        if isinstance(f, F.Deliver):
                            qs.append(f.q)
                            if f.q > dev.max_q:
                                dev.max_q = f.q
                                dev.got.append((f.seq, f.id, f.body))
                if qs and fraction > 0:
                    await dev.raw.send(F.Ack(upto=qs[max(0, int(len(qs) * fraction) - 1)]))

            for step in program:
                kind = step[0]
                if kind == "send":  # a burst in one write: the server reads it at once
                    ids = [f"m{sent + i}" for i in range(1, step[1] + 1)]
                    await alice.send_bytes(b"".join(
                        alice.conn.send(F.Send(id=i, to="bob", body=i.encode())) for i in ids))
                    for _ in ids:
                        sent += 1
                        ack = await alice.recv_until(F.Sent)
                        assert isinstance(ack, F.Sent) and (ack.id, ack.seq) == (f"m{sent}", sent)
                else:
                    dev = devices[step[1]]
                    if kind == "connect" and dev.raw is None:
                        dev.raw = await Raw.open(port)
                        await dev.raw.hello(make_token(server.secret, "bob"), step[1])
                    elif kind == "disconnect" and dev.raw is not None:
                        await dev.raw.aclose()
                        dev.raw = None
                    elif kind == "read" and dev.raw is not None:
                        await read(dev, step[2], 0.05)
            for name, dev in devices.items():  # finally: everyone connects and drains
                if dev.raw is None:
                    dev.raw = await Raw.open(port)
                    await dev.raw.hello(make_token(server.secret, "bob"), name)
                with trio.fail_after(10):
                    while len(dev.got) < sent:
                        await read(dev, 1.0, 0.2)
                assert dev.got == [(i, f"m{i}", f"m{i}".encode()) for i in range(1, sent + 1)], name
            nursery.cancel_scope.cancel()


@given(steps)
@settings(max_examples=25, deadline=None)
def test_every_device_gets_everything_once_in_order(program: list[tuple[Any, ...]]) -> None:
    trio.run(run, program)
