"""The docs' examples run: README's Python SDK blocks and PROTOCOL.md's example session,
against a live node (an example that stops working fails here). Placeholders are filled in:
the README's TOKEN and address, and in the protocol session the values a live node chooses
itself (inbox positions, seqs, times, the session id)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap
from typing import Any

import chatd_client as cc
import pytest
import trio

from chatd.protocol import ErrorCode, decode_body
from chatd.protocol import frames as F

from .conftest import Node, messages
from .raw import Raw

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PROTOCOL = (ROOT / "docs" / "PROTOCOL.md").read_text()


def fenced(doc: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", doc, re.S | re.M)


BLOCKS = fenced(README, "python")
PROGRAM = next(b for b in BLOCKS if "trio.run(main)" in b)  # a whole program
SNIPPET = next(b for b in BLOCKS if "create_group" in b)  # statements, given a client `c`


def test_every_python_block_of_the_readme_compiles() -> None:
    for block in BLOCKS:  # (a program, or statements that run inside an async function)
        compile(f"async def example(c):\n{textwrap.indent(block, '    ')}", "README.md", "exec")


@pytest.fixture
async def users(node: Node) -> Node:
    await node.add_users("dave")
    return node


async def test_readme_first_sdk_example(users: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """The program as written, but for the address and TOKEN; its event loop runs until bob
    has its read receipt."""
    node = users
    source = PROGRAM.replace("tcp://127.0.0.1:7777", node.tcp)
    assert source.rstrip().endswith("trio.run(main)")
    namespace: dict[str, Any] = {"TOKEN": node.token("alice")}
    exec(compile(source.rstrip().removesuffix("trio.run(main)"), "README.md", "exec"),
         namespace)  # defines main(); we run it in this test's trio loop instead of trio.run
    async with node.connect("bob") as bob, trio.open_nursery() as nursery:
        nursery.start_soon(namespace["main"])
        got = await messages(bob, 1)
        assert got[0].text == "hello" and got[0].sender == "alice"
        await bob.send("alice", "hi alice")
        with trio.fail_after(10):  # main() marks it read
            r = await bob.next_event(cc.Read)
        assert isinstance(r, cc.Read) and r.by == "alice"
        nursery.cancel_scope.cancel()
    assert "bob hi alice" in capsys.readouterr().out


async def test_readme_second_sdk_example(users: Node, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """The block's statements, in order, in an async function given a connected client."""
    node = users
    body = textwrap.indent(SNIPPET, "    ")
    namespace: dict[str, Any] = {"chatd_client": cc}
    exec(compile(f"async def example(c):\n{body}", "README.md", "exec"), namespace)
    async with node.connect("alice") as c, node.connect("carol") as carol:
        await namespace["example"](c)
        got = [m.event["kind"] if m.event else m.text for m in await messages(carol, 5)]
        assert got == ["created", "dinner at 8", "mode", "added", "left"]
    assert (await node.server.store.presence_of("alice"))[1]  # hide_last_seen() took
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0]  # bob's presence, as text


# ---- docs/PROTOCOL.md ------------------------------------------------------------------------


def example_block(name: str) -> str:
    start = PROTOCOL.index(f"<!-- example: {name} ")
    return PROTOCOL[start:PROTOCOL.index("\n\n", PROTOCOL.index("\n", start) + 1)] \
        if name == "refused" else fenced(PROTOCOL[start:], "")[0]


def session_frames() -> list[tuple[str, bytes, F.Frame]]:
    """The example session's whole frames: (direction, bytes as in the doc, frame)."""
    out: list[list[Any]] = []
    for line in example_block("session").splitlines():
        head = re.match(r"(C->S|S->C) \w+\s*(\([^)]*\))?", line)
        if head:
            out.append([head.group(1), b""])
            line = line[head.end():]
        tokens = []
        for tok in line.split():
            if not re.fullmatch(r"(?:[0-9a-f]{2})+", tok):
                break
            tokens.append(tok)
        if out and tokens:
            out[-1][1] += bytes.fromhex("".join(tokens))
    return [(d, data, decode_body(data[4:])) for d, data in out
            if len(data) >= 4 and int.from_bytes(data[:4], "big") == len(data) - 4]


def test_protocol_example_session_decodes() -> None:
    names = [(d, type(f).__name__) for d, _, f in session_frames()]
    # (the Hello's token is cut short in the doc: every other frame is there, whole)
    assert names == [("S->C", "Welcome"), ("C->S", "Send"), ("S->C", "Sent"),
                     ("S->C", "Deliver"), ("C->S", "Ack"), ("S->C", "Receipt"),
                     ("C->S", "Read")]


def doc_frame(name: str) -> tuple[bytes, Any]:
    return next((data, f) for _, data, f in session_frames() if type(f).__name__ == name)


async def test_protocol_example_session_against_a_live_node(node: Node) -> None:
    """alice's phone sends the doc's Send, bytes as written; what the node answers equals
    the doc's frames but for the values it chooses; bob acknowledges and reads as in the
    doc (with his real positions), and alice gets the doc's receipts."""
    alice = await Raw.open(node.server.tcp_port)
    welcome = await alice.hello(node.token("alice"), "phone")
    assert welcome == dataclasses.replace(doc_frame("Welcome")[1], session=welcome.session,
                                          server_time=welcome.server_time,
                                          cursor=welcome.cursor, server=welcome.server)
    await alice.recv_until(F.Synced)
    bob = await Raw.open(node.server.tcp_port)
    await bob.hello(node.token("bob"))
    await bob.recv_until(F.Synced)
    await alice.send_bytes(doc_frame("Send")[0])
    sent = await alice.recv_until(F.Sent)
    assert isinstance(sent, F.Sent)
    assert sent == dataclasses.replace(doc_frame("Sent")[1], seq=sent.seq, ts=sent.ts)
    deliver = await bob.recv_until(F.Deliver)
    assert isinstance(deliver, F.Deliver)
    assert deliver == dataclasses.replace(doc_frame("Deliver")[1], q=deliver.q, seq=sent.seq,
                                          ts=sent.ts)
    await bob.send(dataclasses.replace(doc_frame("Ack")[1], upto=deliver.q))
    receipt = await alice.recv_until(F.Receipt)
    assert isinstance(receipt, F.Receipt)
    assert receipt == dataclasses.replace(doc_frame("Receipt")[1], q=receipt.q,
                                          seqs=(sent.seq,), ts=receipt.ts)
    await bob.send(dataclasses.replace(doc_frame("Read")[1], upto=sent.seq))
    read = await alice.recv_until(F.Receipt)
    assert isinstance(read, F.Receipt) and (read.status, read.by) == (F.Status.READ, "bob")


async def test_protocol_refused_connection_example(node: Node) -> None:
    text = example_block("refused")
    expected = re.search(r'`Error\{"t":6, "code":2, "msg":"([^"]+)"\}`', text)
    assert expected, text
    raw = await Raw.open(node.server.tcp_port)
    await raw.send(F.Hello(version=2, token=node.token("alice")))
    error = await raw.recv()
    assert error == F.Error(code=ErrorCode.UNSUPPORTED_VERSION, message=expected.group(1))
    assert await raw.closed()
    assert 'A frame before Hello gets `Error{"code":3}`' in text.replace("\n", " ")
    raw = await Raw.open(node.server.tcp_port)
    await raw.send_bytes(doc_frame("Send")[0])
    error = await raw.recv()
    assert isinstance(error, F.Error) and error.code == ErrorCode.UNAUTHENTICATED
    assert await raw.closed()
