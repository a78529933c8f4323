"""Encode and decode rates of typical frames, against plain msgpack.packb / unpackb of the same
objects in the same run: the ratio is the codec's overhead (validation, dataclasses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack

from chatd.protocol import decode_body, encode_body
from chatd.protocol import frames as F

from .common import save

BODY = b"x" * 100
FRAMES: dict[str, F.Frame] = {
    "send": F.Send(id="c-12345", to="bob", body=BODY),
    "deliver": F.Deliver(q=1234, conv="d:alice:bob", seq=77, ts=1_700_000_000_000,
                         sender="alice", device="phone", id="c-12345", body=BODY),
    "ack": F.Ack(upto=1234),
    "receipt": F.Receipt(q=99, conv="d:alice:bob", seqs=(75, 76, 77), by="bob", status=1,
                         ts=1_700_000_000_000),
}


def rate(fn: Callable[[], Any], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            fn()
        n += 1000
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def run(seconds: float = 0.5) -> dict[str, Any]:
    rows = {}
    for name, frame in FRAMES.items():
        body = encode_body(frame)
        plain = msgpack.unpackb(body)
        enc = rate(lambda frame=frame: encode_body(frame), seconds)  # type: ignore[misc]
        enc_plain = rate(lambda plain=plain: msgpack.packb(plain), seconds)  # type: ignore[misc]
        dec = rate(lambda body=body: decode_body(body), seconds)  # type: ignore[misc]
        dec_plain = rate(lambda body=body: msgpack.unpackb(body), seconds)  # type: ignore[misc]
        rows[name] = {"bytes": len(body), "encode_per_s": round(enc),
                      "packb_per_s": round(enc_plain), "encode_ratio": round(enc / enc_plain, 3),
                      "decode_per_s": round(dec), "unpackb_per_s": round(dec_plain),
                      "decode_ratio": round(dec / dec_plain, 3)}
    return {"frames": rows}


def main(args: Any) -> None:
    result = run(args.seconds)
    print(f"{'frame':8} {'bytes':>5} {'encode/s':>10} {'packb/s':>10} {'ratio':>6}"
          f" {'decode/s':>10} {'unpackb/s':>10} {'ratio':>6}")
    for name, r in result["frames"].items():
        print(f"{name:8} {r['bytes']:5} {r['encode_per_s']:10,} {r['packb_per_s']:10,}"
              f" {r['encode_ratio']:6.2f} {r['decode_per_s']:10,} {r['unpackb_per_s']:10,}"
              f" {r['decode_ratio']:6.2f}")
    print(f"saved {save('codec', result)}")
