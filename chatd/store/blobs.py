"""How the stores keep media lists, receipts and events in one column (msgpack), the same way
in every backend."""

from __future__ import annotations

from typing import Any

import msgpack

from chatd.core import Notice, ReceiptNote
from chatd.protocol.frames import Media
from chatd.protocol.schema import from_map, to_map


def media_blob(media: tuple[Media, ...]) -> bytes | None:
    return msgpack.packb([to_map(m) for m in media]) if media else None


def media(blob: bytes | None) -> tuple[Media, ...]:
    if not blob:
        return ()
    return tuple(from_map(Media, m, "media") for m in msgpack.unpackb(blob))


def receipt_blob(r: ReceiptNote) -> bytes:
    """An inbox receipt without its user, position and conversation (those are columns)."""
    blob: bytes = msgpack.packb({"ss": list(r.seqs), "by": r.by, "st": r.status, "ts": r.ts,
                                 "all": r.all})
    return blob


def receipt(user: str, q: int, conv: str, blob: bytes) -> Notice:
    x = msgpack.unpackb(blob)
    return Notice(q, ReceiptNote(to=user, conv=conv, seqs=tuple(x["ss"]), by=x["by"],
                                 status=x["st"], ts=x["ts"], all=x.get("all", False)))


def event_blob(event: dict[str, Any] | None) -> bytes | None:
    return msgpack.packb(event) if event else None


def event(blob: bytes | None) -> dict[str, Any] | None:
    return msgpack.unpackb(blob) if blob else None
