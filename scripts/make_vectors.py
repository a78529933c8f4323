"""Write docs/vectors/protocol-v1.json: one example of every frame plus the main error cases.

Run `python scripts/make_vectors.py` after a deliberate protocol change; tests/protocol/
test_vectors.py checks the codec against the committed file byte for byte.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack

from chatd.protocol import FRAME_TYPES, ErrorCode, encode_body
from chatd.protocol import frames as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "vectors" / "protocol-v1.json"

IMG = F.Media(id="m-7f3a", mime="image/jpeg", size=48213, width=1280, height=960,
              sha256=bytes(range(32)))
EXAMPLES: list[F.Frame] = [
    F.Hello(version=1, token="alice.phone.1700000000.c2ln", device="phone", client="chatd-py/0.1"),
    F.Hello(version=1, token="t", background=True),
    F.Welcome(version=1, user="alice", device="phone", session="n1-5",
              server_time=1_700_000_000_000,
              heartbeat_ms=30_000, max_frame=1_048_576, cursor=41,
              media_url="https://chat.example.org:7779"),
    F.Welcome(version=1, user="bob", device="default", session="n1-6",
              server_time=1_700_000_000_000, heartbeat_ms=30_000, max_frame=1_048_576,
              server="chatd/0.2.0"),
    F.Ping(nonce=9), F.Pong(nonce=9), F.Ping(),
    F.Goodbye(code=9, reason="server shutting down"),
    F.Error(code=7, message="slow down", ref="c-1", retry_ms=250),
    F.Error(code=4, message="not a member", rid=12),
    F.Send(id="c-1", to="bob", body=b"hello bob"),
    F.Send(id="c-2", group="family", body=b"\x00\x01\xff", media=(IMG,)),
    F.Sent(id="c-1", conv="d:alice:bob", seq=17, ts=1_700_000_000_123),
    F.Deliver(q=42, conv="d:alice:bob", seq=17, ts=1_700_000_000_123, sender="alice",
              device="phone", id="c-1", body=b"hello bob"),
    F.Deliver(q=43, conv="g:family", seq=3, ts=1_700_000_000_500, sender="carol",
              device="laptop", id="x9", group="family", media=(IMG,)),
    F.Deliver(q=44, conv="g:family", seq=4, ts=1_700_000_000_900, sender="carol",
              device="laptop", id="sys-4", group="family",
              event={"kind": "mode", "mode": 1, "by": "carol"}),
    F.Ack(upto=44),
    F.Read(conv="d:alice:bob", upto=17),
    F.Receipt(q=8, conv="d:alice:bob", seqs=(16, 17), by="bob", status=1, ts=1_700_000_001_000),
    F.Receipt(q=9, conv="g:family", seqs=(3,), by="dave", status=2, ts=1_700_000_002_000,
              all=True),
    F.Sync(), F.Synced(upto=44),
    F.History(rid=1, conv="d:alice:bob", before=17, limit=2),
    F.HistoryPage(rid=1, conv="d:alice:bob", more=True, items=(
        F.HistoryItem(seq=15, ts=1_699_999_999_000, sender="bob", device="default", id="b-1",
                      body=b"hi"),
        F.HistoryItem(seq=16, ts=1_699_999_999_500, sender="alice", device="phone", id="c-0",
                      body=b"yo"))),
    F.PresenceSubscribe(users=("bob", "carol")), F.PresenceUnsubscribe(users=("carol",)),
    F.LastSeenQuery(rid=2, user="bob"),
    F.Presence(user="bob", online=False, last_seen=1_699_999_000_000, rid=2),
    F.Presence(user="carol", online=True),
    F.SetPrivacy(rid=3, last_seen="nobody"),
    F.GroupCreate(rid=4, name="Family", members=("bob", "carol")),
    F.GroupAdd(rid=5, group="family", users=("dave",)),
    F.GroupRemove(rid=6, group="family", users=("dave",)),
    F.GroupLeave(rid=7, group="family"), F.GroupRename(rid=8, group="family", name="Fam"),
    F.GroupInfo(rid=9, group="family"), F.GroupList(rid=10),
    F.Group(rid=9, group="family", name="Fam", members=("alice", "bob", "carol"),
            admins=("alice",), mode=1),
    F.Groups(rid=10, groups=("family", "work")),
    F.SetMode(rid=11, conv="g:family", mode=2, ttl=86_400),
    F.ReceiptQuery(rid=12, conv="g:family", seq=3),
    F.ReceiptState(rid=12, conv="g:family", seq=3, delivered=("bob",), read=("carol",),
                   pending=("dave",)),
    F.Ok(rid=11),
    F.UploadSlot(rid=13, sha256=bytes(range(32)), size=2_345_678, mime="image/jpeg"),
    F.Slot(rid=13, url="https://chat.example.org:7779/v1/upload", token="eyJ.c2ln",
           expires=1_700_000_300_000),
    F.Slot(rid=14, media=F.Media(id="ab" * 32, mime="image/jpeg", size=48213, width=1280,
                                 height=960, sha256=bytes.fromhex("ab" * 32),
                                 preview=b"\xff\xd8\xff\xe0")),
]


def json_value(v: Any) -> Any:
    """JSON has no bytes: msgpack bin becomes {"bin": "<hex>"}."""
    if isinstance(v, bytes):
        return {"bin": v.hex()}
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    return v


def frame_vector(frame: F.Frame) -> dict[str, Any]:
    body = encode_body(frame)
    return {
        "name": type(frame).__name__,
        "type": frame.TYPE,
        "map": json_value(msgpack.unpackb(body)),
        "msgpack": body.hex(),
        "tcp": (len(body).to_bytes(4, "big") + body).hex(),
    }


def packed(obj: Any) -> str:
    body = msgpack.packb(obj, use_bin_type=True)
    return (len(body).to_bytes(4, "big") + body).hex()


HELLO_TCP = packed({"t": 1, "v": 1, "tok": "t"})
# Each case: bytes a server receives on TCP; "handshake": whether a Hello is sent first.
ERRORS: list[dict[str, Any]] = [
    {"name": "frame before hello", "tcp": packed({"t": 10, "id": "c", "to": "bob"}),
     "code": ErrorCode.UNAUTHENTICATED},
    {"name": "unsupported major version", "tcp": packed({"t": 1, "v": 2, "tok": "t"}),
     "code": ErrorCode.UNSUPPORTED_VERSION},
    {"name": "length prefix over the limit", "tcp": "00100001", "code": ErrorCode.TOO_LARGE},
    {"name": "empty frame", "tcp": "00000000", "code": ErrorCode.MALFORMED},
    {"name": "not msgpack", "tcp": "00000001c1", "code": ErrorCode.MALFORMED},
    {"name": "not a map", "tcp": packed([1, 2, 3]), "code": ErrorCode.MALFORMED},
    {"name": "unknown frame type", "tcp": packed({"t": 99}), "code": ErrorCode.MALFORMED},
    {"name": "missing field", "tcp": HELLO_TCP + packed({"t": 10, "to": "bob"}),
     "code": ErrorCode.MALFORMED},
    {"name": "wrong field type", "tcp": HELLO_TCP + packed({"t": 13, "q": "1"}),
     "code": ErrorCode.MALFORMED},
    {"name": "bad user id", "tcp": HELLO_TCP + packed({"t": 10, "id": "c", "to": "b b"}),
     "code": ErrorCode.MALFORMED},
    {"name": "server-only frame from a client",
     "tcp": HELLO_TCP + packed({"t": 11, "id": "c", "c": "d:a:b", "s": 1, "ts": 1}),
     "code": ErrorCode.MALFORMED},
    {"name": "second hello", "tcp": HELLO_TCP + HELLO_TCP, "code": ErrorCode.MALFORMED},
    {"name": "truncated frame", "tcp": HELLO_TCP + packed({"t": 3})[:-2], "eof": True,
     "code": ErrorCode.MALFORMED},
]


def main() -> None:
    assert {type(f) for f in EXAMPLES} == set(FRAME_TYPES.values()), "a frame type has no vector"
    doc = {
        "protocol": 1,
        "about": "chatd protocol v1 test vectors. 'msgpack' is the frame body as hex, 'tcp' the"
                 " same with its 4-byte big-endian length prefix, 'map' the decoded body (bin as"
                 " {\"bin\": hex}). Decoders must accept every frame; encoders that omit default"
                 " fields and write keys in this order produce these bytes exactly. 'errors' are"
                 " byte streams a server receives; the server handles Hello(s) in them after"
                 " sending Welcome, then must fail with 'code'. 'eof': the stream ends there.",
        "frames": [frame_vector(f) for f in EXAMPLES],
        "errors": [{**e, "code": int(e["code"]), "code_name": e["code"].name} for e in ERRORS],
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(doc['frames'])} frame and {len(ERRORS)} error vectors to {OUT}")


if __name__ == "__main__":
    main()
